"""`reranker batch` against the real service (CPU vLLM, tiny model): every input line answered
exactly once in the OpenAI batch output format, across a SIGINT and a SIGTERM and the resumes
after them; bad lines answered with error lines while the job goes on; the same scores as the
online API; bulk priority and retries on the service's own 503 + Retry-After. The memory test
runs against benchmarks.fake_vllm (named so): 1 M pairs through a CPU engine would take an hour."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from benchmarks import batch_memory
from tests.conftest import MAX_MODEL_LEN, MODEL_DIR, MODEL_NAME, ROOT, engine_env, eventually

ROUTED = ["/v1/rerank", "/v2/rerank", "/rerank", "/v1/rank", "/score"]


def request_body(route: str, i: int) -> dict:
    query = f"question {i}: where do sea turtles lay their eggs?"
    docs = [f"passage {j} for question {i}: turtles, beaches and the sea, part {j}" for j in range(4)]
    if route == "/v1/rank":
        return {"query": query, "docs": docs}
    if route == "/score":
        return {"text_1": query, "text_2": docs}
    return {"query": query, "documents": docs}


def make_input(path: Path, lines: int = 120) -> tuple[list[str], dict[str, str]]:
    """`lines` good requests across the routes and both formats, with bad lines among them.
    Returns every line's expected custom_id, and the bad ones' expected error codes."""
    out, ids, bad = [], [], {}
    for i in range(lines):
        route = ROUTED[i % len(ROUTED)]
        if i % 6 == 5:  # a plain line
            out.append(orjson.dumps({"id": f"plain-{i}", **request_body("/v1/rerank", i)}))
            ids.append(f"plain-{i}")
        else:
            out.append(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": route,
                                     "body": request_body(route, i)}))
            ids.append(f"req-{i}")
        if i == 7:
            out.append(b'{"custom_id": "broken", "body": {')           # not JSON: named by its line
            ids.append(f"line-{len(out)}")
            bad[ids[-1]] = "invalid_json"
        if i == 13:
            out.append(orjson.dumps({"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"messages": []}}))
            ids.append("chat")
            bad["chat"] = "invalid_url"
        if i == 21:  # a request the service itself refuses: an answer with its 422
            out.append(orjson.dumps({"custom_id": "empty-query", "method": "POST", "url": "/v1/rerank",
                                     "body": {"query": " ", "documents": ["a"]}}))
            ids.append("empty-query")
            bad["empty-query"] = "422"
        if i == 30:
            out.append(b"")  # a blank line is not a request
    path.write_bytes(b"\n".join(out) + b"\n")
    return ids, bad


def start_batch(input_path: Path, output: Path, url: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "offline", "batch", str(input_path), str(output),
                             "--service", url, "--concurrency", "3", "--progress-interval", "1", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def interrupt_when(proc: subprocess.Popen, output: Path, lines: int, sig: signal.Signals) -> tuple[int, str]:
    assert eventually(lambda: lines_in(output) >= lines or proc.poll() is not None, timeout=240)
    assert proc.poll() is None, f"the job ended before it could be interrupted:\n{proc.stdout.read()}"
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


@pytest.fixture(scope="module")
def resumed_job(service, tmp_path_factory):
    """The job interrupted by SIGINT, resumed, interrupted by SIGTERM, resumed to the end."""
    work = tmp_path_factory.mktemp("batch")
    input_path, output = work / "in.jsonl", work / "out.jsonl"
    ids, bad = make_input(input_path)
    runs = []
    proc = start_batch(input_path, output, service.url)
    runs.append((*interrupt_when(proc, output, 10, signal.SIGINT), lines_in(output)))
    proc = start_batch(input_path, output, service.url)
    runs.append((*interrupt_when(proc, output, runs[0][2] + 25, signal.SIGTERM), lines_in(output)))
    proc = start_batch(input_path, output, service.url)
    out, _ = proc.communicate(timeout=600)
    runs.append((proc.returncode, out, lines_in(output)))
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    return {"ids": ids, "bad": bad, "runs": runs, "records": records, "input": input_path}


def test_every_line_is_answered_once_across_interrupts_and_resumes(resumed_job):
    (rc1, log1, after1), (rc2, log2, after2), (rc3, log3, after3) = resumed_job["runs"]
    ids = resumed_job["ids"]
    assert (rc1, rc2, rc3) == (130, 143, 0), (log1, log2, log3)
    assert "stopped by SIGINT; run the same command again to resume" in log1
    assert 10 <= after1 < after2 < after3 == len(ids)
    assert f"{after2:,} already done" in log3
    records = resumed_job["records"]
    assert sorted(r["custom_id"] for r in records) == sorted(ids)  # each once, none lost
    for record in records:  # the OpenAI batch output format
        assert set(record) == {"id", "custom_id", "response", "error"}
        assert record["id"].startswith("batch_req_")
        assert (record["response"] is None) != (record["error"] is None)
        if record["response"] is not None:
            assert set(record["response"]) == {"status_code", "request_id", "body"}
            assert record["response"]["request_id"]


def test_bad_lines_become_error_lines_and_the_job_goes_on(resumed_job):
    by_id = {r["custom_id"]: r for r in resumed_job["records"]}
    for custom_id, expected in resumed_job["bad"].items():
        record = by_id[custom_id]
        if expected == "422":  # the service's own refusal, kept as its answer
            assert record["response"]["status_code"] == 422
            assert "query" in record["response"]["body"]["detail"]
        else:
            assert record["error"]["code"] == expected and record["error"]["message"]
    good = [r for cid, r in by_id.items() if cid not in resumed_job["bad"]]
    assert good and all(r["response"]["status_code"] == 200 for r in good)


def scores_of(route: str, body: dict) -> list[float]:
    """The scores in document order, from any route's answer."""
    if route == "/score":
        return [d["score"] for d in sorted(body["data"], key=lambda d: d["index"])]
    return [r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])]


def test_scores_equal_the_online_api_for_the_same_pairs(resumed_job, service):
    by_id = {r["custom_id"]: r for r in resumed_job["records"]}
    for line in resumed_job["input"].read_bytes().splitlines()[:12]:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        custom_id = request.get("custom_id") or request.get("id")
        route = request.get("url", "/v1/rerank")
        body = request.get("body") or {k: request[k] for k in ("query", "documents")}
        online = service.post(route, body)
        assert online.status_code == 200
        batch = by_id[custom_id]["response"]["body"]
        if route == "/v1/rank":  # ranked by score, documents by text
            assert {r["doc"]: r["score"] for r in batch["results"]} == pytest.approx(
                {r["doc"]: r["score"] for r in online.json()["results"]}, abs=1e-6)
        else:
            assert scores_of(route, batch) == pytest.approx(scores_of(route, online.json()), abs=1e-6)


def test_retries_the_services_503_with_retry_after_and_sends_bulk(extra_shim, tmp_path):
    """A shim that admits 8 pairs at once: three 4-document requests at a time are refused with
    503 + Retry-After; the job waits, tries again and gets every answer. Its work is dispatched as
    bulk (the shim's queue metrics), so interactive traffic keeps its latency."""
    shim = extra_shim(max_inflight_pairs="8")
    input_path, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [{"id": f"q{i}", **request_body("/v1/rerank", i)} for i in range(18)]
    input_path.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\n")
    proc = start_batch(input_path, output, shim.url)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    records = [orjson.loads(x) for x in output.read_bytes().splitlines()]
    assert sorted(r["custom_id"] for r in records) == sorted(x["id"] for x in lines)
    assert all(r["response"]["status_code"] == 200 for r in records)
    metrics = httpx.get(shim.url + "/metrics").text
    rejected = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("reranker_admission_rejections_total{"))
    assert rejected > 0, "no request was refused: the retry path was not exercised"
    assert "retries" in out and " 0 retries" not in out
    waits = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
             if line.startswith("reranker_queue_wait_seconds_count{")}
    assert waits['class="interactive"'] == 0 and waits['class="bulk"'] >= len(lines)


def test_an_unreachable_service_is_one_line_and_exit_2(tmp_path):
    input_path = tmp_path / "in.jsonl"
    input_path.write_text('{"id": "a", "query": "q", "documents": ["d"]}\n')
    started = time.monotonic()
    proc = start_batch(input_path, tmp_path / "out.jsonl", "http://127.0.0.1:9")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "cannot reach the service at http://127.0.0.1:9" in out
    assert time.monotonic() - started < 30 and not (tmp_path / "out.jsonl").exists()


def test_memory_flat_over_1m_pairs_fake_server(tmp_path):
    """1,000 plain lines of 1,000 documents (57 MiB in, 112 MiB out) through the batch job against
    benchmarks.fake_vllm: the job's RSS once a tenth of the output is written is within a few MiB
    of its peak, far below the input's size (benchmarks/RESULTS.md records the figures)."""
    input_path, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    pairs = batch_memory.make_input(input_path, lines=1000, docs=1000)
    fake, url = batch_memory.start_fake(tmp_path / "fake.log")
    try:
        result = batch_memory.measure(input_path, output, url, pairs)
    finally:
        fake.terminate()
        fake.wait(10)
    assert result["exit_code"] == 0 and result["lines"] == 1000, result
    assert result["input_mib"] > 50
    assert result["growth_after_tenth_mib"] < 10, result
    assert result["peak_rss_mib"] < 150, result


def test_launch_starts_a_service_of_its_own_and_stops_it(service, tmp_path):
    """--launch: the launcher as a subprocess (here in mode shim, in front of the shared vLLM, so
    the test does not pay for a second engine start), /ready awaited, the job, SIGTERM."""
    input_path, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [{"id": f"q{i}", **request_body("/v1/rerank", i)} for i in range(5)]
    input_path.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\n")
    env = engine_env(PYTHONPATH=str(ROOT), RERANKER_DRAIN_WINDOW="0")
    done = subprocess.run([sys.executable, "-m", "launcher", "batch", str(input_path), str(output), "--launch",
                           "--", "--mode", "shim", "--vllm-url", service.vllm_url, "--model", str(MODEL_DIR),
                           "--served-model-name", MODEL_NAME, "--max-model-len", str(MAX_MODEL_LEN),
                           "--rate-limit", ""], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    url = done.stderr.split("service ready at ")[1].split()[0]
    records = [orjson.loads(x) for x in output.read_bytes().splitlines()]
    assert sorted(r["custom_id"] for r in records) == sorted(x["id"] for x in lines)
    assert all(r["response"]["status_code"] == 200 for r in records)
    assert (tmp_path / "out.jsonl.service.log").stat().st_size > 0
    with pytest.raises(httpx.ConnectError):  # stopped with the job
        httpx.get(url + "/health", timeout=5)
