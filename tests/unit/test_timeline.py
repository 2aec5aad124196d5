"""The start-up timeline: vLLM's output passes through byte for byte; its phases are recognised."""

import json
import logging
import os
import subprocess
import sys
import threading
import time

from launcher.timeline import Timeline, tee

# Lines as vLLM 0.26 (GPU, benchmarks/gpu logs) and 0.32 (CPU build) print them, in start-up order.
VLLM_LINES = [
    ("(APIServer pid=1) INFO 12-01 10:07:49 [api_utils.py:347]  \u2584\u2584 \u2584\u2588 \u2588     \u2588     "
     "\u2588 \u2580\u2584\u2580 \u2588  version 0.26.0"),
    "(APIServer pid=1) INFO 12-01 10:07:49 [api_utils.py:286] non-default args: {'model': '/m'}",
    "(APIServer pid=1) INFO 12-01 10:08:09 [model.py:733] Resolved architecture: Qwen3ForSequenceClassification",
    "(EngineCore pid=2) INFO 12-01 10:08:22 [core.py:133] Initializing a V1 LLM engine (v0.26.0) with config: ...",
    "(EngineCore pid=2) INFO 12-01 10:08:25 [default_loader.py:501] Loading weights took 1.30 seconds",
    "(EngineCore pid=2) INFO 12-01 10:08:26 [gpu_model_runner.py:5348] Model loading took 1.1 GiB memory and 1.9 seconds",
    "(EngineCore pid=2) INFO 12-01 10:08:30 [monitor.py:34] torch.compile took 4.02 s in total",
    "(EngineCore pid=2) INFO 12-01 10:08:31 [gpu_worker.py:561] Available KV cache memory: 120.5 GiB",
    "(EngineCore pid=2) INFO 12-01 10:08:31 [kv_cache_utils.py:2177] GPU KV cache size: 1,128,000 tokens",
    "(EngineCore pid=2) INFO 12-01 10:08:34 [gpu_model_runner.py:6845] Graph capturing finished in 3 secs, took 0.4 GiB",
    "(EngineCore pid=2) INFO 12-01 10:08:34 [core.py:348] init engine (profile, create kv cache, warmup model) took 9.10 s",
    "(APIServer pid=1) INFO 12-01 10:08:35 [api_server.py:677] Starting vLLM server on http://127.0.0.1:8001",
]
PHASES = ["imports", "config", "model_info", "engine_core", "weights", "compile", "kv_cache",
          "cuda_graphs", "engine_init", "api_server"]


def test_each_vllm_phase_is_recognised_once_with_vllms_own_figures(caplog):
    caplog.set_level(logging.INFO, logger="launcher")
    timeline = Timeline(time.monotonic())
    for line in VLLM_LINES + VLLM_LINES:  # a second round (e.g. a recompile) marks nothing again
        timeline.feed(line)
    logged = [r.phase for r in caplog.records if r.getMessage() == "startup phase"]
    assert logged == PHASES
    timeline.mark("health")
    timeline.mark("ready")
    timeline.finish()
    summary = next(r for r in caplog.records if r.getMessage() == "startup timeline").__dict__
    assert list(summary["phases"]) == PHASES + ["health", "ready"]
    assert summary["vllm_version"] == "0.26.0"
    assert summary["architecture"] == "Qwen3ForSequenceClassification"
    assert summary["weights_s"] == 1.3 and summary["compile_s"] == 4.02
    assert summary["cuda_graphs_s"] == 3 and summary["engine_init_s"] == 9.1
    assert summary["seconds"] == summary["phases"]["ready"]
    assert abs(sum(summary["durations"].values()) - summary["seconds"]) < 0.05


def test_unknown_output_leaves_phases_out_and_colours_do_not_hide_them():
    timeline = Timeline(time.monotonic())
    timeline.feed("some future vLLM says something else entirely")
    timeline.feed("\x1b[32mINFO\x1b[0m 12-01 [model.py:1] Resolved architecture: Qwen3ForCausalLM")
    assert list(timeline.summary()["phases"]) == ["model_info"]


def test_model_info_inspections_add_up():
    timeline = Timeline(time.monotonic())
    for s in ("9.2178168", "10.9554746"):
        timeline.feed(f"DEBUG [log_time.py:26] Registry inspect model class: Elapsed time {s} secs")
    timeline.feed("INFO Resolved architecture: Qwen3ForSequenceClassification")
    assert timeline.summary()["inspect_s"] == 20.173


def test_tee_passes_every_byte_through_in_order(tmp_path):
    """Progress bars redraw with \\r, text may be any bytes: the copy is exact."""
    payload = (b"line one\n" + "\u2588 version 0.32.0\n".encode() + b"bar 10%\rbar 50%\rbar 100%\n"
               + bytes(range(256)) + b"\nno newline at the end")
    src = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out = tmp_path / "out"
    lines = []
    with open(out, "wb") as fh:
        thread = threading.Thread(target=tee, args=(src.stdout, fh.fileno(), lines.append))
        thread.start()
        src.stdin.write(payload)
        src.stdin.close()
        thread.join(10)
    src.wait(10)
    assert out.read_bytes() == payload
    assert "\u2588 version 0.32.0" in lines and "bar 50%" in lines


def test_tee_lets_a_partial_line_out_when_the_writer_pauses(tmp_path):
    read_fd, write_fd = os.pipe()
    out = tmp_path / "out"
    with open(out, "wb") as fh, os.fdopen(read_fd, "rb") as src:
        thread = threading.Thread(target=tee, args=(src, fh.fileno(), lambda _: None, 0.1))
        thread.start()
        os.write(write_fd, b"Loading: 40%")
        time.sleep(0.6)
        assert out.read_bytes() == b"Loading: 40%"  # not held back until a newline
        os.close(write_fd)
        thread.join(5)


def test_a_failing_line_handler_never_stops_the_copy(tmp_path):
    read_fd, write_fd = os.pipe()
    out = tmp_path / "out"

    def broken(_):
        raise RuntimeError("boom")

    with open(out, "wb") as fh, os.fdopen(read_fd, "rb") as src:
        thread = threading.Thread(target=tee, args=(src, fh.fileno(), broken))
        thread.start()
        os.write(write_fd, b"a\nb\n")
        os.close(write_fd)
        thread.join(5)
    assert out.read_bytes() == b"a\nb\n"


def test_launcher_log_lines_are_json(capsys):
    from server.ops.logs import setup_logging

    setup_logging("INFO")
    timeline = Timeline(time.monotonic())
    timeline.feed(VLLM_LINES[2])
    timeline.finish()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["message"] for line in lines] == ["startup phase", "startup timeline"]
    assert lines[0]["phase"] == "model_info" and lines[1]["phases"] == {"model_info": lines[0]["t"]}
