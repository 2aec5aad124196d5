"""The `vl` GPU benchmark phase without a GPU or an engine: its pictures are deterministic, all
different and fit the shim's body limit at the default shape; a call without budget builds and
starts nothing; a call repeated after every step was measured only compares (benchmarks/gpu/
phases/vl.py; its end-to-end CPU dry run is in docs/gpu.md)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from benchmarks.gpu.phases import vl
from server.settings import Settings
from tests.conftest import ROOT


def test_pictures_are_deterministic_different_and_of_the_asked_size_and_format():
    first, again, other = vl.picture("a", 128, "jpeg"), vl.picture("a", 128, "jpeg"), vl.picture("b", 128, "jpeg")
    assert first == again and first != other
    decoded = [Image.open(io.BytesIO(p)) for p in (first, other)]
    assert [(d.format, d.size) for d in decoded] == [("JPEG", (128, 128))] * 2
    assert decoded[0].tobytes() != decoded[1].tobytes()  # other pixels: no cache keyed by them hits
    assert Image.open(io.BytesIO(vl.picture("a", 64, "png"))).format == "PNG"
    assert vl.image_tokens(1024) == 32 * 32 + 2


def test_a_default_request_of_pictures_fits_the_shims_body_limit():
    urls = vl.data_urls([f"k{j}" for j in range(8)], 1024, "jpeg")
    assert len(set(urls)) == 8
    assert all(u.startswith("data:image/jpeg;base64,") for u in urls)
    size = len(json.dumps(vl.body("shim", "a query", urls)))
    assert size < Settings().max_body_bytes
    jina = vl.body("shim-jina", "a query", urls)
    assert base64.b64decode(jina["documents"][0]["image"].split(",", 1)[1])[:2] == b"\xff\xd8"


def run_phase(work: Path, *args: str) -> list[dict]:
    env = {**os.environ, "BENCH_WORK": str(work), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu.orchestrate", "vl", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in (work / "results.jsonl").read_text().splitlines()]


def test_a_call_without_budget_builds_and_starts_nothing(tmp_path: Path):
    lines = run_phase(tmp_path, "--budget", "1")
    assert [(line["kind"], line["step"]) for line in lines] == [("skipped", "vl model")]
    assert not (tmp_path / "models").exists() and not (tmp_path / "launcher.json").exists()


def test_a_repeated_call_after_every_step_only_compares_shim_and_raw_vllm(tmp_path: Path):
    measured = []
    for c, shim, raw in ((8, 40.0, 50.0), (32, 45.0, 60.0)):
        for target, pairs in (("shim", shim), ("vllm", raw)):
            measured.append({"kind": "result", "phase": "vl", "shape": "vl-2b", "config": "vl-2b",
                             "image_size": 1024, "image_format": "jpeg", "docs": 8, "target": target,
                             "concurrency": c, "ok": 10, "errors": 0, "pairs_s": pairs,
                             "p50_ms": 100.0, "p99_ms": 300.0})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(m) + "\n" for m in measured))
    lines = run_phase(tmp_path, "--budget", "1")[len(measured):]
    assert [(line["kind"], line["concurrency"], line["shim_over_vllm"]) for line in lines] == [
        ("vl_compare", 8, 0.8), ("vl_compare", 32, 0.75)]
    assert not (tmp_path / "models").exists()
