"""deploy/nginx/reranker.conf in front of real shims: a real nginx, two shim processes, one vLLM.

The shipped file is rendered into a temp copy: only the lines marked `# @render:NAME` are replaced
(test ports, a low rate limit, a small body limit, a temp access log). nginx runs in the foreground as
the current user with every path under tmp, and is killed after each test.

nginx must be installed (`SETUP_TEST_TOOLS=1 scripts/setup.sh` installs Debian's nginx-light): a missing
binary fails these tests on purpose, CI always has it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, eventually, free_port, start_shim

pytestmark = pytest.mark.engine

CONF = ROOT / "deploy" / "nginx" / "reranker.conf"
MARKER = re.compile(r"^(?P<indent>\s*)\S.*#\s*@render:(?P<name>[a-z_]+)\s*$")
# the shipped upstream server parameters (max_fails ...): tests point the servers at test ports only
SERVER_PARAMS = re.search(r"server 127\.0\.0\.1:8000 ([^;]*);", CONF.read_text())[1]
QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital and largest city of France.",
        "Bananas are rich in potassium.",
        "France's capital city is Paris, on the Seine."]


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:
        pytest.fail("nginx is not installed (Debian: apt-get install nginx-light; "
                    "`SETUP_TEST_TOOLS=1 scripts/setup.sh` does it)")
    return found


def render(text: str, values: dict[str, str | list[str]]) -> str:
    """Replace every line marked `# @render:NAME` with values[NAME] (all marked lines of one name
    collapse into the given lines). Unmarked lines are kept byte for byte."""
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        match = MARKER.match(line)
        if match and match["name"] in values:
            name = match["name"]
            if name not in seen:
                seen.add(name)
                lines = [values[name]] if isinstance(values[name], str) else values[name]
                out.extend(match["indent"] + new for new in lines)
            continue
        out.append(line)
    missing = set(values) - seen
    assert not missing, f"no '# @render:' line for {sorted(missing)} in {CONF}"
    return "\n".join(out) + "\n"


def main_conf(prefix: Path, include: Path) -> str:
    """A minimal nginx.conf around the site file, with every writable path under `prefix`."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {kind}_temp_path {prefix}/tmp/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log info;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n    access_log off;\n{temp}    include {include};\n}}\n")


@dataclass
class Nginx:
    url: str
    port: int
    prefix: Path
    proc: subprocess.Popen

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nginx: fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_nginx(prefix: Path, upstream_ports: list[int], rate: str = "1000r/s", burst: int = 1000,
                body_size: str = "16m") -> Nginx:
    binary = nginx_binary()
    prefix.mkdir(parents=True, exist_ok=True)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / kind).mkdir(parents=True, exist_ok=True)
    port = free_port()
    site = prefix / "reranker.conf"
    site.write_text(render(CONF.read_text(), {
        "listen": f"listen 127.0.0.1:{port};",
        "upstream_servers": [f"server 127.0.0.1:{p} {SERVER_PARAMS};" for p in upstream_ports],
        "rate_zone": f"limit_req_zone $binary_remote_addr zone=reranker_api:1m rate={rate};",
        "limit_req": f"limit_req zone=reranker_api burst={burst} nodelay;",
        "client_max_body_size": f"client_max_body_size {body_size};",
        "access_log": f"access_log {prefix}/access.log reranker_access;",
    }))
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, site))
    check = subprocess.run([binary, "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(prefix / "stderr.log", "w"), start_new_session=True)
    nginx = Nginx(f"http://127.0.0.1:{port}", port, prefix, proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited {proc.returncode}:\n{(prefix / 'stderr.log').read_text()}"
                               f"\n{nginx.error_log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return nginx
        except OSError:
            time.sleep(0.05)
    nginx.stop()
    raise RuntimeError(f"nginx did not listen on {port}:\n{nginx.error_log()}")


@pytest.fixture
def nginx_factory(tmp_path):
    started: list[Nginx] = []

    def make(shims, **kwargs) -> Nginx:
        nginx = start_nginx(tmp_path / f"nginx{len(started)}", [int(s.url.rsplit(":", 1)[1]) for s in shims],
                            **kwargs)
        started.append(nginx)
        return nginx

    yield make
    for nginx in started:
        nginx.stop()


@pytest.fixture(scope="module")
def shims(service):
    """Two shim instances (mode shim) against the shared vLLM, shared by this module's tests that
    neither stop nor reconfigure them (each reads counters as differences, never totals); a test
    that stops a shim or needs other settings starts its own (extra_shim)."""
    pair = [start_shim(service.vllm_url), start_shim(service.vllm_url)]
    yield pair
    for shim in pair:
        shim.stop(timeout=30)


@pytest.fixture
def proxy(nginx_factory, shims) -> Nginx:
    return nginx_factory(shims)


def rank(client: httpx.Client, base: str, **kwargs) -> httpx.Response:
    return client.post(base + "/v1/rank", json={"query": QUERY, "docs": DOCS}, timeout=60, **kwargs)


def request_count(shim) -> float:
    """reranker_request_total{endpoint="/v1/rank",status="200"} of one shim, read directly."""
    text = httpx.get(shim.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("reranker_request_total{") and 'endpoint="/v1/rank"' in line and 'status="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_rank_through_nginx_returns_ranked_results(proxy):
    with httpx.Client() as client:
        response = rank(client, proxy.url)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert sorted(r["doc"] for r in results) == sorted(DOCS)
    assert [r["rank"] for r in results] == [1, 2, 3]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_client_request_id_passes_through_and_nginx_fills_in_a_missing_one(proxy, shims):
    with httpx.Client() as client:
        given = rank(client, proxy.url, headers={"X-Request-Id": "deploy-test-0001"})
        generated = rank(client, proxy.url)
    assert given.status_code == 200 and given.headers["x-request-id"] == "deploy-test-0001"
    assert generated.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])  # nginx's $request_id
    # the shim saw (and logged) the same id nginx logged; both write their log line just after
    # answering, so give them a moment
    assert eventually(lambda: any("deploy-test-0001" in shim.log() for shim in shims))
    assert eventually(lambda: "rid=deploy-test-0001" in proxy.access_log())
    assert eventually(lambda: f"rid={generated.headers['x-request-id']}" in proxy.access_log())


def test_requests_are_spread_over_both_shims(proxy, shims):
    before = [request_count(s) for s in shims]
    with httpx.Client() as client:
        for _ in range(12):
            assert rank(client, proxy.url).status_code == 200
    served = [request_count(s) - b for s, b in zip(shims, before)]
    assert sum(served) == 12
    assert all(n > 0 for n in served), served


def test_health_passes_through_to_a_shim(proxy):
    response = httpx.get(proxy.url + "/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_ready_and_metrics_are_local_only_while_health_is_public(proxy):
    local = httpx.get(proxy.url + "/ready", timeout=10)
    assert local.status_code == 200 and local.json()["status"] == "ready"
    assert httpx.get(proxy.url + "/metrics", timeout=10).status_code == 200
    # 127.0.0.2 is loopback too, but not in the allow list: it stands for a remote client.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as remote:
        for path in ("/ready", "/metrics", "/metrics/engine", "/livez"):
            denied = remote.get(proxy.url + path, timeout=10)
            assert denied.status_code == 403, path
            assert "local" in denied.json()["detail"]
        assert remote.get(proxy.url + "/health", timeout=10).status_code == 200


def test_vllm_routes_pass_through_nginx(proxy):
    """vLLM's own routes (docs/vllm-compat.md) are part of the API behind the proxy."""
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        scored = client.post("/score", json={"queries": "q", "documents": DOCS})
        assert scored.status_code == 200 and len(scored.json()["data"]) == len(DOCS)
        assert client.post("/tokenize", json={"prompt": "q"}).json()["count"] == 1
        assert client.get("/version").json()["version"]
        assert client.get("/ping").status_code == 200


def test_unknown_path_returns_404_json(proxy):
    for method, path in (("GET", "/nope"), ("POST", "/v3/rerank"), ("GET", "/admin")):
        response = httpx.request(method, proxy.url + path, timeout=10)
        assert response.status_code == 404, path
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["detail"] == "Not Found"


def test_openapi_is_proxied(proxy):
    response = httpx.get(proxy.url + "/openapi.json", timeout=10)
    assert response.status_code == 200
    assert "/v1/rank" in response.json()["paths"]


def test_burst_beyond_the_rate_limit_gets_429_json_with_retry_after(nginx_factory, shims):
    # 1 request per minute with a burst of 2: the first 3 pass, the rest are rejected at nginx.
    proxy = nginx_factory(shims, rate="1r/m", burst=2)
    with httpx.Client() as client:
        statuses, rejected = [], None
        for _ in range(8):
            response = rank(client, proxy.url)
            statuses.append(response.status_code)
            if response.status_code == 429:
                rejected = response
    assert statuses[:3] == [200, 200, 200], statuses
    assert statuses[3:] == [429] * 5, statuses
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.headers["content-type"].startswith("application/json")
    assert "rate limit" in rejected.json()["detail"]
    # probes are not rate limited
    assert httpx.get(proxy.url + "/health", timeout=10).status_code == 200


def test_stopping_one_shim_leaves_requests_succeeding(extra_shim, nginx_factory):
    shims = [extra_shim(), extra_shim()]  # its own: this test stops them
    proxy = nginx_factory(shims)
    with httpx.Client() as client:
        assert rank(client, proxy.url).status_code == 200
        shims[0].stop(timeout=30)
        statuses = [rank(client, proxy.url).status_code for _ in range(20)]
        assert statuses == [200] * 20
        assert httpx.get(proxy.url + "/health", timeout=10).status_code == 200
        # with no shim left nginx answers itself: 503 JSON + Retry-After, which clients retry
        shims[1].stop(timeout=30)
        gone = rank(client, proxy.url)
    assert gone.status_code == 503
    assert int(gone.headers["retry-after"]) >= 1
    assert "detail" in gone.json()


def test_body_over_client_max_body_size_gets_413_json(nginx_factory, shims):
    proxy = nginx_factory(shims, body_size="8k")
    with httpx.Client() as client:
        small = rank(client, proxy.url)
        big = client.post(proxy.url + "/v1/rank", json={"query": QUERY, "docs": ["x" * 20_000]}, timeout=30)
    assert small.status_code == 200
    assert big.status_code == 413
    assert "client_max_body_size" in big.json()["detail"]


def test_x_forwarded_for_lets_the_shim_rate_limit_per_client(extra_shim, nginx_factory):
    # The shim trusts nginx (127.0.0.1) and limits each client to 1 request per minute.
    shim = extra_shim(rate_limit="1/minute", trusted_proxies="127.0.0.1/32")
    proxy = nginx_factory([shim])
    with httpx.Client() as client:
        first = rank(client, proxy.url, headers={"X-Forwarded-For": "203.0.113.7"})
        again = rank(client, proxy.url, headers={"X-Forwarded-For": "203.0.113.7"})
        other = rank(client, proxy.url, headers={"X-Forwarded-For": "203.0.113.8"})
    assert first.status_code == 200
    assert again.status_code == 429  # the shim's own limit: the client address reached it
    assert "per client" in again.json()["detail"] and int(again.headers["retry-after"]) >= 1
    assert other.status_code == 200


def test_shipped_config_is_valid_as_is(tmp_path):
    """nginx -t on deploy/nginx/reranker.conf unchanged but for its access log path (needs /var/log)."""
    site = tmp_path / "reranker.conf"
    text = CONF.read_text()
    site.write_text(render(text, {"access_log": f"access_log {tmp_path}/access.log reranker_access;"}))
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "tmp" / kind).mkdir(parents=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_conf(tmp_path, site))
    result = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(conf)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # the defaults the docs describe
    assert "keepalive_timeout 20s;" in text and "server 127.0.0.1:8000" in text
    assert "proxy_next_upstream error timeout http_502 http_503" in text


def test_rolling_restart_of_both_shims_behind_nginx_loses_no_request(extra_shim, nginx_factory):
    """16 pooled keep-alive clients through nginx while each shim in turn gets SIGTERM and is
    started again on its port (a systemd restart of reranker-shim@PORT): every request answered
    200. The drain window moves nginx's upstream connections off the stopping shim with
    Connection: close; what it cannot (a connection refused, one closed under a request) nginx
    retries on the other shim (proxy_next_upstream error ... non_idempotent)."""
    from tests.pooled_load import PooledLoad

    settings = {"score_cache": "true", "drain_window": "2"}
    shims = [extra_shim(**settings), extra_shim(**settings)]
    proxy = nginx_factory(shims, rate="100000r/s", burst=100000)  # the edge limit is not under test
    body = {"query": QUERY, "docs": DOCS}
    with PooledLoad(proxy.url, body, clients=16) as load:
        load.wait_warm()
        time.sleep(1.0)
        load.mark()
        for i, old in enumerate(list(shims)):
            old.proc.send_signal(signal.SIGTERM)
            assert old.proc.wait(60) == 0
            shims[i] = extra_shim(int(old.url.rsplit(":", 1)[1]), **settings)
            time.sleep(1.0)  # an operator's roll: the restarted shim is ready, on to the next
        outcomes = load.stop()
    print(f"nginx rolling restart: {outcomes.summary()}")
    assert not outcomes.lost, (outcomes.summary(), outcomes.lost[:5])
    assert outcomes.refused == 0  # nginx itself never went away
    assert outcomes.ok_after_mark > 200, outcomes.summary()
    assert request_count(shims[0]) > 0  # the restarted shims are back in rotation


def test_idle_timeouts_are_ordered_server_side_longest_on_both_nginx_hops():
    """Hop rule: a server keeps an idle connection longer than its client, so nobody reuses a
    connection the other side is closing: nginx's upstream pool < the shim's keep-alive, and
    nginx's client-side keep-alive > Go's default idle expiry (90 s), the longest common one."""
    from server.settings import Settings

    text = CONF.read_text()
    upstream = text[text.index("upstream reranker_shims"):text.index("server {")]
    server = text[text.index("server {"):]
    upstream_s = int(re.search(r"keepalive_timeout (\d+)s;", upstream)[1])
    client_s = int(re.search(r"keepalive_timeout (\d+)s;", server)[1])
    assert upstream_s < Settings().keep_alive_timeout
    assert client_s > 90


def test_every_registered_dialect_path_is_routed_to_the_shims():
    """The API location lists the paths it passes on: a dialect registered in server/dialects but
    missing there would answer nginx's 404 behind the shipped configuration."""
    from server.dialects import DIALECTS

    api = re.search(r"location ~ (\^/\(v1/rank\|.*\)\$) \{", CONF.read_text())[1]
    for dialect in DIALECTS:
        for path in dialect.paths:
            assert re.fullmatch(api, path), (dialect.name, path)


# --- every dialect under pooled keep-alive load ------------------------------------------------------
# Each product dialect is also tested one request at a time with its real client
# (tests/integration/test_client_libraries.py, test_integrations.py); here they get traffic shaped
# like users': one client IP, one pooled keep-alive client with many requests in flight, bodies of
# every dialect interleaved (Voyage's and Cohere's on the same path), mixed sizes, through the
# shipped nginx to two shims. Each case reads the answer the way its clients parse it.

LOAD_QUERIES = ["what is the capital of the United States?", "如何申请差旅报销", "symptoms of vitamin D deficiency"]
LOAD_SIZES = [1, 2, 3, 5, 8, 13]  # documents per request
LOAD_TOP = 3                      # the cut asked for on the larger requests of dialects that cut


def _load_docs(size: int) -> list[str]:
    """`size` distinct documents of mixed length (a few words to ~60 tokens), some CJK."""
    words = ["capital", "Washington", "Nevada", "vitamin", "sunlight", "报销", "流程", "deficiency"]
    return [f"doc {size}.{i}: " + " ".join(words[(i + j) % len(words)] for j in range(2 + (i * 17) % 40))
            for i in range(size)]


@dataclass
class DialectCase:
    """One dialect's request and how its clients read the answer: read(answer json, docs, top)
    returns [(index, score)] in the answer's order, after checking the envelope."""

    name: str
    path: str
    body: object            # (query, docs, top) -> JSON body
    read: object
    logits: bool = False    # scores are logit(yes) - logit(no) (NIM), else P(yes)
    raw_body: bool = False  # sent as bytes without a Content-Type (Weaviate's Go client)


def _nim(answer, docs, top):
    from server.dialects.nim import RankingResponse

    RankingResponse.model_validate(answer)
    return [(x["index"], x["logit"]) for x in answer["rankings"]]


def _hf(answer, docs, top):
    assert isinstance(answer, list)
    for x in answer:  # Elasticsearch fails on any other key
        assert set(x) == {"index", "score", "text"} and x["text"] == docs[x["index"]], x
    return [(x["index"], x["score"]) for x in answer]


def _weaviate(answer, docs, top):
    from server.dialects.weaviate import WeaviateRerankResponse

    WeaviateRerankResponse.model_validate(answer)
    assert [s["document"] for s in answer["scores"]] == docs  # paired with documents in order
    return list(enumerate(s["score"] for s in answer["scores"]))


def _voyage(answer, docs, top):
    from server.dialects.voyage import VoyageRerankResponse

    VoyageRerankResponse.model_validate(answer)
    assert answer["object"] == "list" and answer["usage"]["total_tokens"] > 0
    assert all(x["document"] == docs[x["index"]] for x in answer["data"])
    return [(x["index"], x["relevance_score"]) for x in answer["data"]]


def _mixedbread(answer, docs, top):
    from server.dialects.mixedbread import MixedbreadRerankResponse

    MixedbreadRerankResponse.model_validate(answer)
    assert answer["top_k"] == (top or len(docs)) and answer["return_input"] is True
    assert all(x["input"] == docs[x["index"]] and x["object"] == "rank_result" for x in answer["data"])
    return [(x["index"], x["score"]) for x in answer["data"]]


def _pinecone(answer, docs, top):
    from server.dialects.pinecone import PineconeRerankResponse

    PineconeRerankResponse.model_validate(answer)
    assert answer["usage"] == {"rerank_units": 1}
    assert all(x["document"] == {"id": f"d{x['index']}", "text": docs[x["index"]]} for x in answer["data"])
    return [(x["index"], x["score"]) for x in answer["data"]]


def _cohere(answer, docs, top):
    assert answer["meta"]["billed_units"]["search_units"] == 1 and answer["id"]
    assert all("document" not in x for x in answer["results"])
    return [(x["index"], x["relevance_score"]) for x in answer["results"]]


def _tei(answer, docs, top):
    assert isinstance(answer, list) and all(set(x) == {"index", "score"} for x in answer)
    return [(x["index"], x["score"]) for x in answer]


DIALECT_CASES = [
    DialectCase("nim", "/v1/ranking", lambda q, d, top: {
        "model": "nvidia/llama-3.2-nv-rerankqa-1b-v2", "query": {"text": q},
        "passages": [{"text": x} for x in d], "truncate": "END", **({"top_n": top} if top else {})}, _nim,
        logits=True),
    DialectCase("hf", "/hf/rerank", lambda q, d, top: {
        "documents": d, "query": q, "return_documents": True, **({"top_n": top} if top else {})}, _hf),
    DialectCase("weaviate", "/weaviate/rerank", lambda q, d, top: {"query": q, "documents": d, "property": ""},
                _weaviate, raw_body=True),
    DialectCase("voyage-v1", "/v1/rerank", lambda q, d, top: {
        "query": q, "documents": d, "model": "rerank-2", "top_k": top, "return_documents": True,
        "truncation": True}, _voyage),
    DialectCase("voyage-v2", "/v2/rerank", lambda q, d, top: {
        "query": q, "documents": d, "model": "rerank-2", "top_k": top, "return_documents": True}, _voyage),
    DialectCase("mixedbread", "/v1/reranking", lambda q, d, top: {
        "model": "mixedbread-ai/mxbai-rerank-large-v2", "query": q, "input": d, "return_input": True,
        **({"top_k": top} if top else {})}, _mixedbread),
    DialectCase("pinecone", "/pinecone/rerank", lambda q, d, top: {
        "model": "bge-reranker-v2-m3", "query": q, "documents": [{"id": f"d{i}", "text": x} for i, x in enumerate(d)],
        "return_documents": True, "parameters": {"truncate": "END"}, **({"top_n": top} if top else {})},
        _pinecone),
    # the older dialects in the same run: Cohere's bodies share /v1/rerank and /v2/rerank with Voyage's
    DialectCase("cohere-v1", "/v1/rerank", lambda q, d, top: {
        "model": "rerank-english-v3.0", "query": q, "documents": d, **({"top_n": top} if top else {})}, _cohere),
    DialectCase("cohere-v2", "/v2/rerank", lambda q, d, top: {
        "model": "rerank-v3.5", "query": q, "documents": d, **({"top_n": top} if top else {})}, _cohere),
    DialectCase("tei", "/rerank", lambda q, d, top: {"query": q, "texts": d}, _tei),
]
CUTS = {"nim", "hf", "voyage-v1", "voyage-v2", "mixedbread", "pinecone", "cohere-v1", "cohere-v2"}


def _core_scores(url: str, query: str, docs: list[str]) -> tuple[list[float], list[float]]:
    """P(yes) and logit(yes) - logit(no) per document from the scoring core, one request at a time
    on one shim (no load, no proxy)."""
    out = []
    for raw in (False, True):
        r = httpx.post(url + "/v1/rerank", json={"query": query, "documents": docs, "raw_scores": raw}, timeout=60)
        assert r.status_code == 200, r.text
        by_index = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        out.append([by_index[i] for i in range(len(docs))])
    return out[0], out[1]


def test_every_dialect_under_pooled_keep_alive_load_through_nginx(proxy, shims):
    """One client IP, one pooled keep-alive client with 16 requests in flight, every dialect's
    body interleaved at mixed sizes (1-13 documents of a few to ~60 tokens): every answer is 200,
    in its dialect's shape, sorted (or in input order for Weaviate), cut to top_n/top_k where
    asked, with the core's score for each document; both shims served the load."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    sets = [(LOAD_QUERIES[i % len(LOAD_QUERIES)], _load_docs(size)) for i, size in enumerate(LOAD_SIZES)]
    truth = [_core_scores(shims[0].url, q, d) for q, d in sets]
    work = [(case, s, None) for case in DIALECT_CASES for s in range(len(sets))]
    work += [(case, s, LOAD_TOP) for case in DIALECT_CASES if case.name in CUTS
             for s, (_, docs) in enumerate(sets) if len(docs) > LOAD_TOP]
    random.Random(7).shuffle(work)
    before = [_answered(shim) for shim in shims]
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with httpx.Client(base_url=proxy.url, timeout=60, limits=limits) as client:

        def send(item):
            case, s, top = item
            query, docs = sets[s]
            body = case.body(query, docs, top)
            if case.raw_body:
                return client.post(case.path, content=json.dumps(body).encode())
            return client.post(case.path, json=body)

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(send, work))
        seconds = time.monotonic() - started
    print(f"{len(work)} requests of {len(DIALECT_CASES)} dialects through nginx in {seconds:.1f} s "
          f"({len(work) / seconds:.0f}/s)")

    for (case, s, top), r in zip(work, answers):
        where = (case.name, len(sets[s][1]), top)
        assert r.status_code == 200, (where, r.text[:300])
        if case.raw_body:
            assert "content-type" not in r.request.headers
        _, docs = sets[s]
        pairs = case.read(r.json(), docs, top)
        p_yes, logit = truth[s]
        want = logit if case.logits else p_yes
        expected = min(top or len(docs), len(docs))
        assert len(pairs) == expected and len({i for i, _ in pairs}) == expected, (where, pairs)
        got = dict(pairs)
        for i, score in pairs:  # the core's score, within the CPU build's batching drift
            assert score == pytest.approx(want[i], abs=1e-5), (where, i, score, want[i])
        if case.name != "weaviate":
            scores = [score for _, score in pairs]
            assert scores == sorted(scores, reverse=True), where
        if expected < len(docs):  # the best ones were kept
            assert min(want[i] for i in got) >= max(want[i] for i in range(len(docs)) if i not in got) - 1e-5, where

    # every request reached one shim once (none retried, none lost), and both shims took a share
    after = [_answered(shim) for shim in shims]
    served = [{p: n - b.get(p, 0.0) for p, n in a.items() if n > b.get(p, 0.0)} for a, b in zip(after, before)]
    sent: dict[str, int] = {}
    for case, _, _ in work:
        sent[case.path] = sent.get(case.path, 0) + 1
    assert {p: sum(counts.get(p, 0.0) for counts in served) for p in sent} == sent
    assert all(sum(counts.values()) > 0 for counts in served), served


def _answered(shim) -> dict[str, float]:
    """endpoint -> reranker_request_total{status="200"} of one shim, read directly."""
    text = httpx.get(shim.url + "/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in
            re.findall(r'^reranker_request_total\{endpoint="([^"]+)",status="200"\} (\S+)$', text, re.M)}
