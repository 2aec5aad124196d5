"""Production behaviours of the shim against real vLLM: probes, metrics, auth, rate limits,
admission control, cancellation, request ids and logs."""

import concurrent.futures as cf
import json
import time

import httpx
import jwt
import pytest

from tests.conftest import eventually

pytestmark = pytest.mark.engine

BODY = {"query": "capital of France", "docs": ["Paris is the capital of France.", "Bananas."]}


def post(svc, path="/v1/rank", body=BODY, **kw):
    return httpx.post(svc.url + path, json=body, timeout=120, **kw)


# --- probes and metrics -----------------------------------------------------------------------
def test_probes_report_a_loaded_model(service):
    for path in ("/health", "/healthz"):
        r = httpx.get(service.url + path)
        assert r.status_code == 200 and r.json()["status"] == "ok"
    assert httpx.get(service.url + "/ready").json()["status"] == "ready"
    assert httpx.get(service.url + "/livez").status_code == 200


def test_metrics_count_requests_documents_and_latency(service):
    post(service)
    post(service, body={"query": "", "docs": ["a"]})
    text = httpx.get(service.url + "/metrics").text
    assert 'reranker_request_total{endpoint="/v1/rank",status="200"}' in text
    assert 'reranker_request_total{endpoint="/v1/rank",status="422"}' in text
    assert 'reranker_request_duration_seconds_bucket{endpoint="/v1/rank",le="0.01"}' in text
    for name in ("reranker_documents_total", "reranker_prompt_tokens_total", "reranker_inflight_requests",
                 "reranker_admission_rejections_total", "reranker_engine_up 1.0"):
        assert name in text


def test_engine_metrics_are_proxied_for_scraping(service):
    text = httpx.get(service.url + "/metrics/engine").text
    assert "vllm:prompt_tokens_total" in text or "vllm:num_requests_running" in text


# --- request ids and logs ---------------------------------------------------------------------
def test_request_id_is_accepted_returned_and_logged_without_text(extra_shim):
    shim = extra_shim()
    secret_doc = "TOP-SECRET-DOCUMENT-TEXT"
    r = post(shim, body={"query": "QUERY-TEXT-X", "docs": [secret_doc]},
             headers={"X-Request-Id": "req-123", "Authorization": "Bearer sk-very-secret"})
    assert r.headers["x-request-id"] == "req-123"
    assert post(shim).headers["x-request-id"]  # generated when absent

    def logged() -> bool:
        lines = [json.loads(line) for line in shim.log().splitlines() if line.startswith("{")]
        return any(line.get("request_id") == "req-123" and line.get("status") == 200 for line in lines)

    assert eventually(logged)  # the access log line is written just after the answer
    log = shim.log()
    assert secret_doc not in log and "QUERY-TEXT-X" not in log and "sk-very-secret" not in log


# --- auth -------------------------------------------------------------------------------------
def test_auth_off_accepts_any_bearer(service):
    assert post(service, headers={"Authorization": "Bearer whatever-dummy"}).status_code == 200


def test_api_keys_from_env_and_file(extra_shim, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nfile-key-1\n")
    shim = extra_shim(api_keys="env-key-1,env-key-2", api_keys_file=str(keys))
    for key in ("env-key-1", "env-key-2", "file-key-1"):
        assert post(shim, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic env-key-1"}):
        r = post(shim, headers=headers)
        assert r.status_code == 401 and r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")
    # probes and metrics stay open
    for path in ("/health", "/ready", "/livez", "/metrics"):
        assert httpx.get(shim.url + path).status_code == 200


def test_jwt_hs256_and_rs256_with_issuer_and_audience(extra_shim):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    shim = extra_shim(jwt_secret="hs-secret-0123456789-0123456789-0123", jwt_public_key=public_pem,
                      jwt_issuer="https://issuer.example", jwt_audience="reranker")
    good = {"sub": "svc-a", "iss": "https://issuer.example", "aud": "reranker", "exp": int(time.time()) + 60}

    def call(token):
        return post(shim, headers={"Authorization": f"Bearer {token}"}).status_code

    assert call(jwt.encode(good, "hs-secret-0123456789-0123456789-0123", algorithm="HS256")) == 200
    assert call(jwt.encode(good, private, algorithm="RS256")) == 200
    assert call(jwt.encode({**good, "aud": "other"}, private, algorithm="RS256")) == 401
    assert call(jwt.encode({**good, "iss": "https://evil"}, private, algorithm="RS256")) == 401
    assert call(jwt.encode({**good, "exp": int(time.time()) - 10}, private, algorithm="RS256")) == 401
    assert call(jwt.encode(good, "wrong-secret-0123456789-0123456789", algorithm="HS256")) == 401


# --- rate limits ------------------------------------------------------------------------------
def test_rate_limit_per_client_ip_with_retry_after(extra_shim):
    shim = extra_shim(rate_limit="3/minute")
    codes = [post(shim).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = post(shim)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and r.json()["detail"]
    assert httpx.get(shim.url + "/health").status_code == 200  # probes are never limited


def test_rate_limit_trusts_forwarded_for_only_from_trusted_proxies(extra_shim):
    trusted = extra_shim(rate_limit="2/minute", trusted_proxies="127.0.0.1/32")
    a = [post(trusted, headers={"X-Forwarded-For": "10.0.0.1"}).status_code for _ in range(3)]
    b = [post(trusted, headers={"X-Forwarded-For": "10.0.0.2"}).status_code for _ in range(2)]
    assert a == [200, 200, 429] and b == [200, 200]
    untrusted = extra_shim(rate_limit="2/minute")
    c = [post(untrusted, headers={"X-Forwarded-For": f"10.0.1.{i}"}).status_code for i in range(3)]
    assert c == [200, 200, 429]  # spoofed addresses do not buy a fresh budget


def test_rate_limit_per_api_key(extra_shim):
    shim = extra_shim(rate_limit="2/minute", api_keys="key-a,key-b")
    a = [post(shim, headers={"Authorization": "Bearer key-a"}).status_code for _ in range(3)]
    b = post(shim, headers={"Authorization": "Bearer key-b"}).status_code
    assert a == [200, 200, 429] and b == 200


# --- admission control and cancellation ---------------------------------------------------------
def test_overload_is_refused_at_once_with_retry_after(extra_shim):
    shim = extra_shim(max_inflight_pairs="40")
    body = {"query": "q", "docs": [f"document number {i} " * 40 for i in range(30)]}
    with cf.ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        responses = list(pool.map(lambda _: post(shim, body=body), range(16)))
    codes = [r.status_code for r in responses]
    refused = [r for r in responses if r.status_code == 503]
    assert refused and codes.count(200) >= 1 and set(codes) <= {200, 503}
    for r in refused:
        assert r.headers["retry-after"] == "1" and "busy" in r.json()["detail"]
        # refused at once, not queued until work frees up or a 120 s upstream timeout: a refusal
        # does no work, and 3 s leaves room for a 2-core CI machine busy with the accepted ones
        assert r.elapsed.total_seconds() < 3.0
    assert "reranker_admission_rejections_total" in httpx.get(shim.url + "/metrics").text
    assert time.monotonic() - started < 120


def test_client_disconnect_cancels_its_work(extra_shim):
    shim = extra_shim()
    body = {"query": "q", "docs": [f"long document {i} " * 150 for i in range(600)]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(shim.url + "/v1/rank", json=body, timeout=1.5)

    def inflight_pairs():
        for line in httpx.get(shim.url + "/metrics").text.splitlines():
            if line.startswith("reranker_inflight_pairs "):
                return float(line.split()[1])

    deadline = time.monotonic() + 3
    while inflight_pairs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert inflight_pairs() == 0  # the work was dropped, not run to completion (~minutes on CPU)
    assert post(shim).status_code == 200


# --- several shim workers -----------------------------------------------------------------------
def test_several_workers_share_the_port_merge_metrics_and_drain(extra_shim):
    import psutil

    shim = extra_shim(workers="2")
    children = psutil.Process(shim.proc.pid).children()
    assert len(children) == 2
    with cf.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: post(shim).status_code, range(24)))
    assert codes == [200] * 24
    text = httpx.get(shim.url + "/metrics").text
    assert 'reranker_request_total{endpoint="/v1/rank",status="200"} 24.0' in text
    assert shim.stop(timeout=60) == 0
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


@pytest.mark.parametrize("constant", ["0.5", "nan"])
def test_readiness_refuses_an_engine_returning_constant_scores_fake_engine(tmp_path, constant):
    """A fake vLLM that answers one score for everything (0.5: vLLM #27857; NaN, which JSON makes
    null: an overflowing quantised model): real vLLM cannot be made to do this on demand, so a
    fake engine stands in. /health says the engine is up, but the service must not take traffic,
    must say why in its log, and a request sent anyway gets a clear 502, never a null score."""
    import subprocess
    import sys

    from tests.conftest import MODEL_DIR, ROOT, engine_env, free_port

    fake_port, port = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-m", "benchmarks.fake_vllm", "--port", str(fake_port),
                             "--constant", constant], cwd=ROOT)
    env = engine_env(RERANKER_MODEL=str(MODEL_DIR), RERANKER_VLLM_URL=f"http://127.0.0.1:{fake_port}",
                     RERANKER_PORT=str(port), RERANKER_HOST="127.0.0.1", RERANKER_RATE_LIMIT="")
    log_path = tmp_path / "shim.log"
    shim = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        # the watcher runs the canary once a second
        assert eventually(lambda: "engine canary failed" in log_path.read_text(), timeout=15)
        ready = httpx.get(url + "/ready")
        assert ready.status_code == 503 and "canary" in ready.json()["reason"]
        # what the RerankerEngineCanaryFailing alert sees: engine up, canary not passed
        metrics = httpx.get(url + "/metrics").text
        assert "reranker_engine_up 1.0" in metrics and "reranker_engine_verified 0.0" in metrics
        r = httpx.post(url + "/v1/rank", json={"query": "q", "docs": ["a", "b"]})
        if constant == "nan":
            assert r.status_code == 502 and "finite" in r.json()["detail"]
        else:  # a constant is a valid score: only readiness can catch it
            assert r.status_code == 200
        assert httpx.get(url + "/livez").status_code == 200
    finally:
        shim.terminate()
        fake.terminate()
        shim.wait(30)
        fake.wait(30)

