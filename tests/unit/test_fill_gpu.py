"""How many engines the launcher runs on one GPU when the operator leaves it to the launcher
(fill_gpu): four under its MPS daemon for a small model on a large GPU with enough CPUs, one
otherwise, and never against an explicit choice. What the engines then get (ports, per-engine
memory share, fixed KV cache, the MPS environment) is what the launcher builds for the explicit
`--engines 4 --engines-per-gpu 4 --cuda-mps` (tests/unit/test_multi_engine_launcher.py)."""

from __future__ import annotations

import json

import pytest

from launcher import gpu
from launcher.demo_model import SHAPES, VL_SHAPES, VOCAB_SIZE
from launcher.vllm_args import engine_commands, fill_gpu
from server.settings import Settings

GIB = 1 << 30
H200 = 140 * GIB


def checkpoint_config(shape: str) -> dict:
    if shape in VL_SHAPES:
        text, _ = VL_SHAPES[shape]
        return {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
                "text_config": {"vocab_size": 151936, **text}}
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": VOCAB_SIZE,
            "tie_word_embeddings": True, **SHAPES[shape]}


def choose(settings: Settings, shape: str = "0.6b", *, gpu_bytes: int | None = H200, cpus: int = 16,
           env: dict | None = None, mps_problem: str | None = None, visible: bool = True):
    tried: list[bool] = []

    def probe() -> str | None:
        tried.append(True)
        return mps_problem

    out, choice = fill_gpu(settings, gpu=visible, env={"CUDA_VISIBLE_DEVICES": "0", **(env or {})},
                           config=checkpoint_config(shape), gpu_bytes=gpu_bytes, cpus=cpus,
                           mps_problem=probe)
    return out, choice, bool(tried)


def test_a_small_model_on_a_large_gpu_gets_four_engines_under_the_launchers_mps():
    out, choice, tried = choose(Settings(model="/m"))
    assert (out.engines, out.engines_per_gpu, out.cuda_mps) == (4, 4, True)
    assert choice is not None and choice.engines_per_gpu == 4 and "0.6B" in choice.reason
    assert tried  # the daemon was tried before it was chosen
    # what the launcher then starts: four engines on the one GPU, each a quarter of its memory
    commands = engine_commands(out, ["Qwen3ForCausalLM"], gpu=True, env={"CUDA_VISIBLE_DEVICES": "0"},
                               kv_cache_bytes=8 * GIB)
    assert len(commands) == 4
    assert {env["CUDA_VISIBLE_DEVICES"] for _, env in commands} == {"0"}
    for cmd, _ in commands:
        assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.225"
        assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(8 * GIB)
    ports = [cmd[cmd.index("--port") + 1] for cmd, _ in commands]
    assert len(set(ports)) == 4


@pytest.mark.parametrize("case, kwargs, why", [
    ("4B model", {"shape": "4b"}, "4.0B"),
    ("8B model", {"shape": "8b"}, "8.2B"),
    ("VL reranker", {"shape": "vl-2b"}, "Qwen3-VL"),
    ("24 GiB GPU", {"gpu_bytes": 24 * GIB}, "24 GiB"),
    ("GPU memory unreadable", {"gpu_bytes": None}, "unknown"),
    ("8 CPUs", {"cpus": 8}, "8 CPUs"),
    ("node MPS", {"env": {"CUDA_MPS_PIPE_DIRECTORY": "/run/mps"}}, "node provides MPS"),
    ("two GPUs", {"env": {"CUDA_VISIBLE_DEVICES": "0,1"}}, "2 GPUs"),
])
def test_one_engine_where_the_measured_rule_does_not_apply(case, kwargs, why):
    settings = Settings(model="/m")
    out, choice, tried = choose(settings, **kwargs)
    assert out is settings and out.engines == 1 and not out.cuda_mps, case
    assert choice is not None and choice.engines_per_gpu == 1 and why in choice.reason, choice
    assert not tried, "the MPS daemon is only tried when four engines would be chosen"


def test_one_engine_when_the_mps_daemon_cannot_start():
    out, choice, tried = choose(Settings(model="/m"), mps_problem="nvidia-cuda-mps-control not found")
    assert tried and out.engines == 1 and not out.cuda_mps
    assert choice is not None and "no MPS daemon: nvidia-cuda-mps-control not found" in choice.reason


@pytest.mark.parametrize("explicit", [
    {"engines_per_gpu": 1}, {"cuda_mps": False}, {"engines": 2, "engines_per_gpu": 2},
    {"engines": 2}, {"fill_gpu": False}, {"tensor_parallel_size": 2}, {"mode": "shim"},
    {"mode": "vllm"},  # the shim elsewhere knows only the URLs it was given
])
def test_an_operators_choice_is_kept(explicit):
    settings = Settings(model="/m", **explicit)
    out, choice, tried = choose(settings)
    assert out is settings and choice is None and not tried


def test_an_explicit_one_engine_from_the_environment_is_kept(monkeypatch):
    """The chart sets RERANKER_ENGINES_PER_GPU only when gpu.enginesPerGpu is given: a variable
    that is set is an operator's choice, even at 1."""
    monkeypatch.setenv("RERANKER_ENGINES_PER_GPU", "1")
    out, choice, _ = choose(Settings(model="/m"))
    assert out.engines_per_gpu == 1 and choice is None


def test_no_gpu_no_choice():
    settings = Settings(model="/m")
    out, choice, tried = choose(settings, visible=False)
    assert out is settings and choice is None and not tried


def test_the_shim_learns_the_chosen_engines_from_the_launcher():
    """The shim is started with the launcher's settings as RERANKER_* variables: after the
    choice it sends work to all four engines and splits the engine token budget over them."""
    out, _, _ = choose(Settings(model="/m", max_num_batched_tokens=32768))
    env = out.to_env()
    assert (env["RERANKER_ENGINES"], env["RERANKER_ENGINES_PER_GPU"], env["RERANKER_CUDA_MPS"]) == ("4", "4", "true")
    shim = Settings.model_validate({k.removeprefix("RERANKER_").lower(): v for k, v in env.items()})
    assert len(shim.upstream_urls) == 4
    assert shim.engine_token_budget_resolved == 32768 // 4


def test_model_size_from_the_checkpoint_shape():
    assert gpu.ModelShape.of_checkpoint(checkpoint_config("0.6b")).weight_bytes(1) == pytest.approx(0.596e9, rel=0.01)
    assert gpu.ModelShape.of_checkpoint(checkpoint_config("vl-2b")).weight_bytes(1) > 1.7e9  # text model only


def test_the_launcher_logs_its_choice(capsys, monkeypatch, tmp_path):
    """`python -m launcher` on a GPU says how many engines it chose and why, at INFO."""
    from launcher import cli

    monkeypatch.setattr(cli, "fill_gpu", lambda s: fill_gpu(
        s, gpu=True, env={"CUDA_VISIBLE_DEVICES": "0"}, config=checkpoint_config("0.6b"),
        gpu_bytes=H200, cpus=16, mps_problem=lambda: None))

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(cli.preflight, "check_ports", lambda s: None)
    monkeypatch.setattr(cli.preflight, "check_gpus", lambda s: None)
    monkeypatch.setattr(cli.preflight, "check_model", lambda s: ["Qwen3ForCausalLM"])
    monkeypatch.setattr(cli, "engine_commands", stop)
    with pytest.raises(Stop):
        cli.main(["--model", str(tmp_path), "--cache-dir", str(tmp_path)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    chosen = [r for r in lines if r["message"] == "engines per GPU chosen"]
    assert chosen and chosen[0]["engines_per_gpu"] == 4 and chosen[0]["cuda_mps"] is True
    assert chosen[0]["level"] == "INFO" and "0.6B" in chosen[0]["reason"]


def test_the_mps_daemon_is_unusable_without_the_driver_utilities(tmp_path, monkeypatch):
    """The real check the choice uses (no stand-in): without nvidia-cuda-mps-control on PATH it
    says so, and nothing is left running."""
    monkeypatch.setenv("PATH", str(tmp_path))
    problem = gpu.mps_usable(gpu.mps_env(str(tmp_path)))
    assert problem is not None and "nvidia-cuda-mps-control not found" in problem
