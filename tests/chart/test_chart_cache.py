"""The caches vLLM is given are the ones the chart mounts: every ci values file is rendered with the
real helm, the launcher's own derivation (launcher/vllm_args.py) runs on the rendered environment,
and every cache directory must sit on the pod's cache volume (emptyDir or the claim)."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

import pytest

from launcher.vllm_args import vllm_environment
from server.settings import Settings
from tests.chart.test_chart import CI_FILES, helm, render, render_ci, workload  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("helm")  # the pinned helm binary, installed once
CACHE_VARS = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def launcher_view(container: dict, monkeypatch, gpu: bool) -> tuple[Settings, dict]:
    """Settings from the rendered RERANKER_* values, and the environment the launcher gives vLLM."""
    literal = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    for key in list(os.environ):
        if key.startswith(("RERANKER_", "VLLM_", "TORCHINDUCTOR_", "TRITON_")):
            monkeypatch.delenv(key)
    for name, value in literal.items():
        if name.startswith("RERANKER_"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    others = {k: v for k, v in literal.items() if not k.startswith("RERANKER_")}
    return settings, vllm_environment(others, gpu=gpu, settings=settings)


@pytest.mark.parametrize("values_file", CI_FILES)
def test_every_vllm_cache_is_on_the_mounted_cache_volume(values_file, monkeypatch):
    _, pod, container = workload(render_ci(values_file))
    gpu = any("gpu" in k for k in container.get("resources", {}).get("limits", {}))
    _, env = launcher_view(container, monkeypatch, gpu)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    cache_mount = [m for m in container["volumeMounts"] if m["name"] == "cache"]
    assert len(cache_mount) == 1
    mount = PurePosixPath(cache_mount[0]["mountPath"])
    assert not cache_mount[0].get("readOnly")  # vLLM writes its caches there
    assert volumes["cache"].get("emptyDir") is not None or volumes["cache"].get("persistentVolumeClaim")
    for name in CACHE_VARS:
        assert PurePosixPath(env[name]).is_relative_to(mount / "vllm"), (name, env[name])
    # where vLLM 0.26/0.32 keep the model-info cache and the startup plan (registry.py, startup_plan.py)
    assert PurePosixPath(env["VLLM_CACHE_ROOT"], "modelinfos").is_relative_to(mount)


def test_cache_on_a_created_claim_moves_with_mount_path(monkeypatch):
    _, pod, container = workload(render("--set", "cache.type=pvc", "--set", "cache.mountPath=/warm"))
    claim = {v["name"]: v for v in pod["spec"]["volumes"]}["cache"]["persistentVolumeClaim"]["claimName"]
    assert claim
    _, env = launcher_view(container, monkeypatch, gpu=True)
    assert env["VLLM_CACHE_ROOT"] == "/warm/vllm"
    assert env["TRITON_CACHE_DIR"].startswith("/warm/vllm/")


def test_default_release_is_deterministic_and_forks_the_engine_on_gpu(monkeypatch):
    _, _, container = workload(render())
    settings, env = launcher_view(container, monkeypatch, gpu=True)
    assert settings.deterministic and env["VLLM_BATCH_INVARIANT"] == "1"
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"
    _, _, container = workload(render("--set", "vllm.deterministic=false", "--set", "vllm.forkEngine=false"))
    settings, env = launcher_view(container, monkeypatch, gpu=True)
    assert not settings.deterministic and "VLLM_BATCH_INVARIANT" not in env
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in env
