"""Settings -> vLLM argv: what an SRE sets is what vLLM gets."""

import json

import pytest

from launcher.cli import parse
from launcher.vllm_args import QWEN3_OVERRIDES, TEMPLATE, build_vllm_command, needs_qwen3_overrides
from server.settings import Settings


def flag(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_every_sre_knob_maps_to_its_vllm_flag():
    s = parse(["--model", "/m", "--served-model-name", "rr", "--vllm-host", "0.0.0.0", "--vllm-port", "9001",
               "--max-model-len", "4096", "--dtype", "bfloat16", "--gpu-memory-utilization", "0.5",
               "--max-num-seqs", "256", "--max-num-batched-tokens", "16384", "--no-enable-prefix-caching",
               "--enforce-eager", "--tensor-parallel-size", "2", "--vllm-shutdown-timeout", "45"])
    cmd = build_vllm_command(s, architectures=["Qwen3ForCausalLM"], python="py")
    assert cmd[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    expected = {"--model": "/m", "--served-model-name": "rr", "--host": "0.0.0.0", "--port": "9001",
                "--max-model-len": "4096", "--dtype": "bfloat16", "--gpu-memory-utilization": "0.5",
                "--max-num-seqs": "256", "--max-num-batched-tokens": "16384",
                "--tensor-parallel-size": "2", "--shutdown-timeout": "45", "--runner": "pooling",
                "--convert": "classify", "--chat-template": str(TEMPLATE)}
    assert {k: flag(cmd, k) for k in expected} == expected
    assert "--no-enable-prefix-caching" in cmd and "--enforce-eager" in cmd


def test_unset_optional_flags_are_left_to_vllm_on_cpu():
    cmd = build_vllm_command(Settings(model="/m"), architectures=["Qwen3ForCausalLM"], gpu=False)
    for name in ("--gpu-memory-utilization", "--max-num-seqs", "--max-num-batched-tokens",
                 "--no-enable-prefix-caching", "--enforce-eager"):
        assert name not in cmd
    assert "--enable-prefix-caching" in cmd  # explicit: the shared query prefix is the point


def test_gpu_default_batches_32k_tokens_per_step_unless_set():
    s = Settings(model="/m")
    assert flag(build_vllm_command(s, ["Qwen3ForCausalLM"], gpu=True), "--max-num-batched-tokens") == "32768"
    s = Settings(model="/m", max_num_batched_tokens=8192)
    assert flag(build_vllm_command(s, ["Qwen3ForCausalLM"], gpu=True), "--max-num-batched-tokens") == "8192"


def test_one_cache_volume_holds_every_compile_cache():
    from launcher.vllm_args import vllm_environment

    env = vllm_environment({"VLLM_CACHE_ROOT": "/cache/vllm"})
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith("/cache/vllm")
    assert env["TRITON_CACHE_DIR"].startswith("/cache/vllm")
    assert vllm_environment({"VLLM_CACHE_ROOT": "/c", "TRITON_CACHE_DIR": "/t"})["TRITON_CACHE_DIR"] == "/t"


def test_cpu_build_gets_a_fixed_kv_cache_space_unless_set():
    from launcher.vllm_args import vllm_environment

    assert vllm_environment({}, gpu=False)["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert vllm_environment({"VLLM_CPU_KVCACHE_SPACE": "8"}, gpu=False)["VLLM_CPU_KVCACHE_SPACE"] == "8"
    assert "VLLM_CPU_KVCACHE_SPACE" not in vllm_environment({}, gpu=True)


def test_cpu_build_runs_the_model_inside_the_engine_core_for_one_device():
    from launcher.vllm_args import vllm_environment

    assert vllm_environment({}, gpu=False)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in vllm_environment({}, gpu=False, tensor_parallel_size=2)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in vllm_environment({}, gpu=True)
    assert vllm_environment({"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}, gpu=False)[
        "VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"


def test_boolean_settings_are_switches():
    s = parse(["--score-cache", "--no-enable-prefix-caching", "--enforce-eager"])
    assert s.score_cache and not s.enable_prefix_caching and s.enforce_eager


def test_original_checkpoint_gets_qwen3_overrides_and_seq_cls_does_not():
    s = Settings(model="/m")
    original = build_vllm_command(s, architectures=["Qwen3ForCausalLM"])
    assert json.loads(flag(original, "--hf-overrides")) == QWEN3_OVERRIDES
    converted = build_vllm_command(s, architectures=["Qwen3ForSequenceClassification"])
    assert "--hf-overrides" not in converted
    assert flag(converted, "--chat-template") == str(TEMPLATE)  # the template is needed either way


def test_overrides_detected_from_the_checkpoint_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForSequenceClassification"]}))
    assert not needs_qwen3_overrides(Settings(model=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    assert needs_qwen3_overrides(Settings(model=str(tmp_path)))
    assert not needs_qwen3_overrides(Settings(model=str(tmp_path), qwen3_overrides="off"))


def test_extra_args_pass_through_from_flag_env_and_double_dash(monkeypatch):
    monkeypatch.setenv("RERANKER_EXTRA_VLLM_ARGS", '["--seed", "7"]')
    s = parse(["--model", "/m", "--", "--max-logprobs", "0"])
    cmd = build_vllm_command(s, architectures=["Qwen3ForCausalLM"])
    assert cmd[-4:] == ["--seed", "7", "--max-logprobs", "0"]


def test_environment_variables_configure_the_launcher(monkeypatch):
    monkeypatch.setenv("RERANKER_MAX_MODEL_LEN", "1234")
    monkeypatch.setenv("RERANKER_MODEL", "Qwen/Qwen3-Reranker-4B")
    s = parse([])
    assert s.max_model_len == 1234 and s.model_name == "qwen3-reranker-4b"


def test_settings_round_trip_through_child_environment(monkeypatch):
    s = Settings(model="/m", api_keys=["a", "b"], enable_prefix_caching=False, max_model_len=999)
    for key, value in s.to_env().items():
        monkeypatch.setenv(key, value)
    again = Settings()
    assert again.model_dump() == s.model_dump()


def test_bad_flag_value_is_refused():
    with pytest.raises(SystemExit):
        parse(["--max-model-len", "lots"])


def test_vllm_keeps_idle_connections_well_beyond_the_shim_pool_expiry():
    """Every hop: the server's idle timeout outlives its client's pool expiry (the shim's aiohttp
    pool forgets idle connections to vLLM after KEEPALIVE_EXPIRY_S)."""
    from launcher.vllm_args import vllm_environment
    from server.scoring.engine import KEEPALIVE_EXPIRY_S

    for gpu in (False, True):
        assert float(vllm_environment({}, gpu=gpu)["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) >= 5 * KEEPALIVE_EXPIRY_S
    assert vllm_environment({"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "9"})["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "9"


def test_aot_compile_runs_vllm_through_the_entry_that_keeps_it_on_gpu_only():
    from launcher.vllm_args import vllm_environment

    s = parse(["--model", "/m"])  # on by default
    gpu_cmd = build_vllm_command(s, architectures=["Qwen3ForCausalLM"], python="py", gpu=True)
    assert gpu_cmd[:4] == ["py", "-m", "launcher.vllm_entry", "vllm.entrypoints.openai.api_server"]
    env = vllm_environment({}, gpu=True, settings=s)
    assert env["VLLM_USE_AOT_COMPILE"] == "1" and env["RERANKER_KEEP_AOT_COMPILE"] == "1"
    # nothing to keep without batch-invariant kernels, and nothing at all on the CPU build
    off = parse(["--model", "/m", "--aot-compile", "--no-deterministic"])
    assert build_vllm_command(off, architectures=["Qwen3ForCausalLM"], python="py", gpu=True)[2] == \
        "vllm.entrypoints.openai.api_server"
    assert "RERANKER_KEEP_AOT_COMPILE" not in vllm_environment({}, gpu=True, settings=off)
    assert build_vllm_command(s, architectures=["Qwen3ForCausalLM"], python="py", gpu=False)[2] == \
        "vllm.entrypoints.openai.api_server"


def test_keep_aot_compile_puts_the_setting_back_after_the_override_stand_in_vllm_module(monkeypatch):
    """A stand-in for vLLM 0.26's batch_invariant module (the CPU build in CI has none)."""
    import sys
    import types

    from launcher import vllm_entry

    fake = types.ModuleType("vllm.model_executor.layers.batch_invariant")

    def override_envs_for_invariance():
        import os
        os.environ["VLLM_USE_AOT_COMPILE"] = "0"

    fake.override_envs_for_invariance = override_envs_for_invariance
    monkeypatch.setitem(sys.modules, "vllm.model_executor.layers.batch_invariant", fake)
    layers = sys.modules.get("vllm.model_executor.layers")
    if layers is not None:
        monkeypatch.setattr(layers, "batch_invariant", fake, raising=False)
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    monkeypatch.delenv("RERANKER_KEEP_AOT_COMPILE", raising=False)
    assert vllm_entry.keep_aot_compile() is False  # not asked for: vLLM's behaviour untouched
    monkeypatch.setenv("RERANKER_KEEP_AOT_COMPILE", "1")
    assert vllm_entry.keep_aot_compile() is True
    fake.override_envs_for_invariance()
    import os
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "1"


def test_gpu_captures_cuda_graphs_for_reranker_sized_steps_unless_the_operator_chose():
    s = parse(["--model", "/m"])
    cmd = build_vllm_command(s, architectures=["Qwen3ForCausalLM"], python="py", gpu=True)
    i = cmd.index("--cudagraph-capture-sizes")
    sizes = [int(x) for x in cmd[i + 1:i + 21]]
    # vLLM's own sizes stop at 512; a reranker step of a few thousand tokens needs a graph too
    assert sizes[:10] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512] and sizes[-1] == 16384
    assert sizes == sorted(set(sizes))
    # never beyond the engine's step
    small_step = parse(["--model", "/m", "--max-num-batched-tokens", "4096"])
    cmd = build_vllm_command(small_step, architectures=["Qwen3ForCausalLM"], python="py", gpu=True)
    tail = cmd[cmd.index("--cudagraph-capture-sizes") + 1:]
    assert max(int(x) for x in tail if x.isdigit()) == 4096
    # the operator's own graph or compilation flags, eager mode, 0 and the CPU build: vLLM's sizes
    for argv in (["--", "--cudagraph-capture-sizes", "1", "2"], ["--", "--compilation-config", "{}"],
                 ["--", "-O3"], ["--enforce-eager"], ["--cudagraph-max-tokens", "0"]):
        cmd = build_vllm_command(parse(["--model", "/m", *argv]), architectures=["Qwen3ForCausalLM"],
                                 python="py", gpu=True)
        assert cmd.count("--cudagraph-capture-sizes") == (1 if "--cudagraph-capture-sizes" in argv else 0)
    assert "--cudagraph-capture-sizes" not in build_vllm_command(s, architectures=["Qwen3ForCausalLM"],
                                                                 python="py", gpu=False)
