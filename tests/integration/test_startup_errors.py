"""Start-up mistakes a new user makes: `python -m launcher` says what happened and what to do in
one line on stderr and exits 2, before any engine starts; never a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import MODEL_DIR, ROOT, engine_env, ensure_model, free_port


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    ensure_model()
    # an empty Hugging Face cache, and no network use at all
    return engine_env(HF_HOME=str(tmp_path_factory.mktemp("hf-home")), HF_HUB_OFFLINE="1")


def launch(env, *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "launcher", "--port", str(free_port()),
                          "--vllm-port", str(free_port()), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    assert "starting vLLM" not in out.stdout, "nothing may start before the configuration is checked"
    return out.returncode, out.stderr.strip(), took


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_hub_model_unreachable_offline(offline_env):
    rc, err, took = launch(offline_env, "--model", "Qwen/Qwen3-Reranker-0.6B")
    line = one_line(err)
    assert rc == 2 and line.startswith("reranker: error: model Qwen/Qwen3-Reranker-0.6B is not in the local")
    assert "HF_HUB_OFFLINE=1" in line and "hf download Qwen/Qwen3-Reranker-0.6B" in line and "--model" in line
    assert took < 30


def test_local_model_path_missing(offline_env, tmp_path):
    rc, err, _ = launch(offline_env, "--model", str(tmp_path / "Qwen3-Reranker-0.6B"))
    line = one_line(err)
    assert rc == 2 and f"model path {tmp_path / 'Qwen3-Reranker-0.6B'} does not exist" in line
    assert "fix --model" in line


def test_checkpoint_that_is_not_a_qwen3_reranker(offline_env, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "xlm-roberta", "architectures": ["XLMRobertaForSequenceClassification"]}))
    rc, err, _ = launch(offline_env, "--model", str(tmp_path))
    line = one_line(err)
    assert rc == 2 and "is not a Qwen3 reranker checkpoint (model_type 'xlm-roberta'" in line
    assert "Qwen/Qwen3-Reranker-0.6B" in line


def test_directory_without_config_json(offline_env, tmp_path):
    rc, err, _ = launch(offline_env, "--model", str(tmp_path))
    assert rc == 2 and "has no config.json" in one_line(err)


@pytest.mark.parametrize("flag, what", [("--port", "the API"), ("--vllm-port", "vLLM")])
def test_port_already_in_use(offline_env, flag, what):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        rc, err, _ = launch(offline_env, "--model", str(MODEL_DIR), "--host", "127.0.0.1", flag, str(port))
    line = one_line(err)
    assert rc == 2 and f"port {port} on 127.0.0.1 ({what}, {flag}) is already in use" in line
    assert f"choose another port with {flag}" in line


def test_shim_mode_with_a_missing_tokenizer(offline_env, tmp_path):
    rc, err, _ = launch(offline_env, "--mode", "shim", "--vllm-url", "http://127.0.0.1:1",
                        "--model", str(tmp_path / "nowhere"))
    assert rc == 2 and "tokenizer path" in one_line(err) and "does not exist" in err


def test_bad_rate_limit_value(offline_env):
    rc, err, _ = launch(offline_env, "--rate-limit", "300 a minute")
    line = one_line(err)
    assert rc == 2 and line.startswith("reranker: --rate-limit: not a rate limit: '300 a minute'")
    assert "N/minute" in line
