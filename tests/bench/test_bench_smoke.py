"""Smoke runs of the benchmark tools (CI): they run end to end and produce figures.

The load generator runs the seed and rag workloads (small documents, 20 requests, c=4) against
the shared service's shim and its raw vLLM side by side; shim_overhead runs a few hundred
requests through one shim worker in front of the instant fake vLLM. Figures are not judged here
(2 CPU cores, a CPU engine): only that every run happened, without errors.
"""

import json
import subprocess
import sys

import pytest

from tests.conftest import MAX_MODEL_LEN, MODEL_DIR, MODEL_NAME, ROOT

pytestmark = pytest.mark.engine


def run_tool(args, timeout):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    return lines


def test_loadgen_smoke_shim_and_vllm_side_by_side(service, tmp_path):
    out = tmp_path / "results.jsonl"
    lines = run_tool(["benchmarks.loadgen", "--shim", service.url, "--vllm", service.vllm_url,
                      "--model", MODEL_NAME, "--workloads", "seed,rag", "--smoke",
                      "--tokenizer", str(MODEL_DIR), "--max-model-len", str(MAX_MODEL_LEN),
                      "--out", str(out), "--label", "ci-smoke"], timeout=60)
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    results = [line for line in lines if line["kind"] == "result"]
    assert {(r["workload"], r["target"]) for r in results} == {
        ("seed", "shim"), ("seed", "vllm"), ("rag", "shim"), ("rag", "vllm")}
    for r in results:
        assert r["errors"] == 0 and r["error_kinds"] == {}, r
        assert r["requests"] == 20 and r["ok"] == 20 and r["concurrency"] == 4
        assert r["req_s"] > 0 and r["pairs_s"] > 0 and r["tokens_s"] > 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["date"] and r["machine"]["cpus"] and r["label"] == "ci-smoke"
        assert r["tokens_source"] == "usage"  # both targets report usage
    assert {line["workload"] for line in lines if line["kind"] == "compare"} == {"seed", "rag"}


def test_shim_overhead_smoke_produces_figures(tmp_path):
    lines = run_tool(["benchmarks.shim_overhead", "--smoke", "--out", str(tmp_path / "o.jsonl")],
                     timeout=60)
    (line,) = [line for line in lines if line["kind"] == "shim_overhead"]
    assert line["errors"] == 0, line
    assert line["throughput_requests"] == 300
    for key in ("direct_p50_ms", "shim_p50_ms", "shim_max_req_s", "direct_max_req_s"):
        assert line[key] > 0, (key, line)
    assert isinstance(line["added_p50_ms"], float)
