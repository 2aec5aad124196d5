"""A real Prometheus scrapes a real shim while the test sends it a known load.

The shim runs with two workers (multiprocess metrics, as on a GPU pod) against the shared real vLLM
(CPU build); Prometheus is configured from deploy/prometheus/prometheus.yml (the shim's /metrics and
vLLM's metrics through /metrics/engine, the shipped alert rules), scraping every second, with the
`namespace`/`pod`/`service` target labels Kubernetes service discovery would add. One client IP sends
a steady RATE requests per second for DURATION seconds over pooled keep-alive connections: mixed
dialects, mixed sizes, repeated documents (the score cache is on) and a few invalid bodies.

Proven against what Prometheus stored:
- the prometheus-adapter rules behind the chart's HPA metrics (looked up from the HPA the real helm
  renders) return the per-pod request rate within 10 % of the rate sent, and a saturation that is 0
  idle, positive under load, and agrees with Little's law; the chart's KEDA query agrees too;
- every PromQL expression of the Grafana dashboard parses and returns data (named exceptions: series
  that cannot exist on a CPU host without Kubernetes), and its variables resolve;
- the shipped rules load and evaluate without error, and a healthy load raises no alert.

The one deviation from the shipped queries: a rate range of 2m becomes WINDOW (the load lasts
DURATION seconds to fit the CI budget; a 2-minute rate over 24 s of data would read a fifth of the
true rate). Everything else is the query as the adapter, KEDA or Grafana would send it.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import yaml

from tests.chart import test_chart as chart
from tests.conftest import ROOT, Service, eventually, start_shim
from tests.observability.conftest import Prometheus

pytestmark = pytest.mark.engine

RATE = 20.0                 # requests per second
DURATION = 24.0             # seconds of load
WINDOW = "20s"              # rate range used instead of the shipped [2m] (see the module docstring)
WINDOW_S = 20.0
IDLE_S = 4.0                # idle baseline before the load
NAMESPACE, POD, SERVICE = "rerank", "rr-reranker-0", "rr-reranker"
SHIM_JOB = "reranker"
DASHBOARD = ROOT / "charts" / "reranker" / "files" / "reranker-dashboard.json"
RULES = ROOT / "charts" / "reranker" / "files" / "reranker.rules.yaml"
ADAPTER_RULES = ROOT / "charts" / "reranker" / "prometheus-adapter-rules.yaml"
# Dashboard series that cannot have data here, each with the reason; their expressions must still parse.
NO_DATA_HERE = {
    "gpu_memory_used_bytes": "NVML: no GPU on the CI host",
    "gpu_utilization_ratio": "NVML: no GPU on the CI host",
    "kube_pod_container_status_restarts_total": "kube-state-metrics: no Kubernetes here",
}

QUERIES = ["what is the capital of france", "如何申请差旅报销", "best way to cache embeddings",
           "symptoms of vitamin d deficiency", "how do transformers rank documents"]
DOC_POOL = [f"document {i}: " + " ".join(["retrieval", "ranking", "paris", "cache", "budget", "vitamin",
                                          "报销", "流程"][j % 8] for j in range(i % 7 + 3))
            for i in range(8)]
SIZES = [1, 3, 2, 1, 4]  # documents per request, one of them usually cached: ~24 engine pairs/s


@dataclass
class Run:
    prom: Prometheus
    shim: Service
    idle_at: float          # end of the idle baseline
    load_start: float
    load_end: float         # when the last request was due
    after_at: float         # a moment after the load, idle again
    sent: list[tuple[float, float, int]]   # (start, end, status) per request

    @property
    def at(self) -> float:
        """Evaluation time inside the steady load: the WINDOW before it holds only load."""
        return self.load_end - 0.5

    def client_rate(self) -> float:
        """Requests the shim answered in the WINDOW before `at` (it counts them as they end)."""
        return sum(1 for _, end, _ in self.sent if self.at - WINDOW_S < end <= self.at) / WINDOW_S


def _request(i: int) -> tuple[str, dict]:
    query = QUERIES[i % len(QUERIES)]
    # one document from a small pool (the score cache answers it after its first time), the rest new
    docs = [DOC_POOL[i % len(DOC_POOL)]] + [f"{DOC_POOL[(i * 7 + k) % len(DOC_POOL)]} (edition {i}.{k})"
                                            for k in range(1, SIZES[i % len(SIZES)])]
    kind = i % 20
    if kind == 19:
        return "/v1/rerank", {"documents": docs}                 # no query: a 422 users do send
    if kind % 3 == 0:
        return "/v1/rank", {"query": query, "docs": docs}
    if kind % 3 == 1:
        return "/rerank", {"query": query, "texts": docs}        # TEI
    return "/v1/rerank", {"query": query, "documents": docs, "top_n": 3}


def send_load(url: str) -> tuple[float, float, list[tuple[float, float, int]]]:
    """RATE requests a second for DURATION seconds, paced on a schedule (not closed-loop), from one
    pooled client; returns (first due time, last due time, per-request timings)."""
    n = int(RATE * DURATION)
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with httpx.Client(base_url=url, timeout=30, limits=limits) as client, ThreadPoolExecutor(16) as pool:

        def one(i: int) -> tuple[float, float, int]:
            path, body = _request(i)
            start = time.time()
            status = client.post(path, json=body).status_code
            return start, time.time(), status

        t0 = time.time() + 0.2
        futures = []
        for i in range(n):
            delay = t0 + i / RATE - time.time()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, i))
        sent = [f.result() for f in futures]
    return t0, t0 + (n - 1) / RATE, sent


@pytest.fixture(scope="module")
def run(service, tmp_path_factory):
    shim = start_shim(service.vllm_url, workers="2", score_cache="true")
    prom = None
    try:
        config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(RULES)]
        labels = {"namespace": NAMESPACE, "pod": POD, "service": SERVICE}
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [shim.url.removeprefix("http://")], "labels": labels}]
        prom = Prometheus(config, tmp_path_factory.mktemp("prometheus"))
        assert eventually(prom.targets_up, timeout=20, interval=0.2), prom.api("targets")
        time.sleep(IDLE_S)
        idle_at = time.time()
        start, end, sent = send_load(shim.url)
        time.sleep(3.0)  # a few more scrapes; the pod is idle again
        yield Run(prom, shim, idle_at, start, end, time.time(), sent)
    finally:
        if prom is not None:
            prom.stop()
        shim.stop(timeout=30)


def test_the_load_was_the_one_intended(run):
    statuses = [status for _, _, status in run.sent]
    assert len(statuses) == int(RATE * DURATION)
    assert statuses.count(422) == len(statuses) // 20
    assert set(statuses) == {200, 422}, "a healthy service answers every valid request"
    span = max(end for _, end, _ in run.sent) - run.load_start
    assert abs(len(statuses) / span - RATE) <= 0.1 * RATE, "the service kept up with the schedule"


# --- autoscaling: the adapter rules behind the HPA, and KEDA's query -------------------------------------


def _adapter_rule_for(metric: str) -> dict:
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric]
    return rule


def _adapter_query(rule: dict, series: str) -> str:
    """The metricsQuery as prometheus-adapter sends it for GET .../namespaces/rerank/pods/*/<metric>
    (its template variables substituted as the adapter does), with the range shortened to WINDOW."""
    query = (rule["metricsQuery"].replace("<<.Series>>", series)
             .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"')
             .replace("<<.GroupBy>>", "pod"))
    assert "[2m]" in query
    return query.replace("[2m]", f"[{WINDOW}]")


def _hpa_pods_metrics(*args: str) -> dict[str, str]:
    hpa = chart.one(chart.render(*args), "HorizontalPodAutoscaler")
    return {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"]
            for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}


def _series_of(rule: dict, run: Run) -> str:
    """The adapter's discovery: its seriesQuery must find the shim's series, with the resource labels."""
    found = run.prom.api("series", **{"match[]": rule["seriesQuery"], "start": f"{run.load_start:.0f}"})
    names = {s["__name__"] for s in found["data"] if s.get("pod") == POD and s.get("namespace") == NAMESPACE}
    (name,) = names
    assert re.search(rule["name"]["matches"], name)
    return name


def test_adapter_request_rate_rule_returns_the_per_pod_rate_sent(helm, run):
    metrics = _hpa_pods_metrics("--set", "autoscaling.requestsPerSecond.enabled=true")
    (metric,) = [m for m in metrics if "requests" in m]
    rule = _adapter_rule_for(metric)
    query = _adapter_query(rule, _series_of(rule, run))
    result = run.prom.query(query, at=run.at)
    assert [r["metric"] for r in result] == [{"pod": POD}]
    measured, sent = float(result[0]["value"][1]), run.client_rate()
    print(f"adapter request rate {measured:.2f}/s, client {sent:.2f}/s")
    assert abs(measured - sent) <= 0.10 * sent, f"{query} = {measured:.2f}/s, sent {sent:.2f}/s"


def test_adapter_saturation_rule_is_zero_idle_and_moves_with_load(helm, run):
    metrics = _hpa_pods_metrics()
    assert list(metrics) == ["reranker_engine_saturation"], "the default HPA scales on saturation alone"
    rule = _adapter_rule_for("reranker_engine_saturation")
    query = _adapter_query(rule, _series_of(rule, run))
    idle_query = query.replace(f"[{WINDOW}]", f"[{IDLE_S - 1:.0f}s]")
    assert run.prom.value(idle_query, at=run.idle_at) == 0.0, "idle pod: saturation 0"
    loaded = run.prom.value(query, at=run.at)
    assert loaded > 0.0, "saturation must move with load"
    assert run.prom.value(idle_query, at=run.after_at) == 0.0, "idle again: back to 0"
    # Little's law: mean in-flight engine tokens = saturation x capacity = tokens/s x time each
    # request's tokens spend admitted, which is part of (at most) its HTTP latency.
    from server.settings import Settings

    capacity = Settings.model_fields["saturation_capacity_tokens"].default
    sel = f'{{namespace="{NAMESPACE}",pod="{POD}"}}'
    tokens_per_s = run.prom.value(f"sum(rate(reranker_prompt_tokens_total{sel}[{WINDOW}]))", at=run.at)
    window = [(s, e) for s, e, status in run.sent if status == 200 and run.at - WINDOW_S < e <= run.at]
    mean_latency = sum(e - s for s, e in window) / len(window)
    bound = tokens_per_s * mean_latency / capacity
    print(f"saturation {loaded:.5f} (Little's-law bound {bound:.5f}: {tokens_per_s:.0f} tokens/s x "
          f"{mean_latency * 1000:.0f} ms / {capacity})")
    assert 0.2 * bound <= loaded <= 1.1 * bound, (loaded, bound, tokens_per_s, mean_latency)
    # The instantaneous gauge (the dashboard's "now") is 0 at rest, and above 0 while work is in
    # flight. Sampling it at 1 s scrapes while 12 ms requests run mostly reads 0 (seen in a full
    # run), so the "in flight" half holds one large request open and reads the shim directly.
    assert run.prom.value(f"sum(reranker_engine_saturation{sel})", at=run.after_at) == 0.0
    assert _gauge_rises_while_a_large_request_runs(run.shim.url)


def _gauge_rises_while_a_large_request_runs(url: str) -> bool:
    import threading

    import httpx

    body = {"query": "saturation probe", "docs": [f"probe document {i} " + "word " * 300 for i in range(120)]}
    done = threading.Event()
    worker = threading.Thread(target=lambda: (httpx.post(url + "/v1/rank", json=body, timeout=120), done.set()),
                              daemon=True)
    worker.start()
    seen = False
    with httpx.Client(timeout=10) as client:
        while not done.is_set() and not seen:
            for line in client.get(url + "/metrics").text.splitlines():
                if line.startswith("reranker_engine_saturation ") and float(line.split()[1]) > 0:
                    seen = True
    worker.join(120)
    return seen


def test_keda_default_query_reads_the_same_saturation(helm, run):
    objs = chart.render("--set", "autoscaling.enabled=false", "--set", "keda.enabled=true",
                        "--api-versions", "keda.sh/v1alpha1/ScaledObject")
    so = chart.one(objs, "ScaledObject")
    (trigger,) = [t for t in so["spec"]["triggers"] if t["type"] == "prometheus"]
    query = trigger["metadata"]["query"]
    assert f'namespace="{chart.NAMESPACE}"' in query and f'service="{SERVICE}"' in query
    assert chart.NAMESPACE == NAMESPACE and chart.RELEASE + "-reranker" == SERVICE
    keda = run.prom.value(query.replace("[2m]", f"[{WINDOW}]"), at=run.at)
    adapter = run.prom.value(_adapter_query(_adapter_rule_for("reranker_engine_saturation"),
                                            "reranker_engine_saturation_seconds_total"), at=run.at)
    assert keda > 0 and keda == pytest.approx(adapter, rel=1e-6), (keda, adapter)  # one pod: sum = its value
    assert trigger["metricType"] == "AverageValue" and float(trigger["metadata"]["threshold"]) == 0.7


helm = chart.helm  # the pinned helm binary (tests/chart), as a fixture here


# --- the dashboard ----------------------------------------------------------------------------------------


def _dashboard_targets() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    targets = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            targets.append((panel["title"], target["expr"]))
    return targets


def _grafana(expr: str, shim: Service) -> str:
    """Grafana's substitutions: the dashboard variables set to this service, the interval macros to
    what a 1 s scrape interval and a short time range give."""
    # Grafana's Prometheus data source regex-escapes a variable's value inside =~ and doubles the
    # backslash for the PromQL string literal.
    instance = re.escape(shim.url.removeprefix("http://")).replace("\\", "\\\\")
    out = (expr.replace("$__rate_interval", WINDOW).replace("$__range", "60s").replace("$__interval", "1s")
           .replace("$namespace", NAMESPACE).replace("$job", SHIM_JOB).replace("$instance", instance))
    assert "$" not in out, f"unknown Grafana variable in {expr}"
    return out


def test_every_dashboard_expression_parses_and_returns_data(run):
    targets = _dashboard_targets()
    assert len(targets) >= 25
    empty = []
    for title, expr in targets:
        result = run.prom.query(_grafana(expr, run.shim), at=run.at)  # asserts it parses and evaluates
        exempt = [name for name in NO_DATA_HERE if name in expr]
        if not result and not exempt:
            empty.append(f"{title}: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    for name in NO_DATA_HERE:
        assert any(name in expr for _, expr in targets), f"stale exception {name}"


def test_dashboard_core_panels_show_the_load(run):
    """The values an operator reads off the dashboard match the load that was sent."""
    panels = {title: expr for title, expr in _dashboard_targets()}

    def value(title: str) -> float:
        return run.prom.value(_grafana(panels[title], run.shim), at=run.at)

    assert abs(value("Requests/s") - run.client_rate()) <= 0.1 * run.client_rate()
    assert value("5xx ratio") == 0.0
    assert value("Ready instances") == 1.0
    assert 0 < value("p95 latency") < 30
    by_status = {r["metric"]["status"]: float(r["value"][1]) for r in run.prom.query(
        _grafana(panels["Non-2xx responses/s by status"], run.shim), at=run.at)}
    assert set(by_status) == {"422"} and abs(by_status["422"] - RATE / 20) <= 0.35 * RATE / 20
    hit_ratio = value("Score cache hit ratio")
    assert 0 < hit_ratio < 1, "repeated documents hit the score cache, new ones miss"


def test_dashboard_variables_resolve_to_this_service(run):
    dash = json.loads(DASHBOARD.read_text())
    expected = {"namespace": NAMESPACE, "job": SHIM_JOB, "instance": run.shim.url.removeprefix("http://")}
    variables = [v for v in dash["templating"]["list"] if v["type"] == "query"]
    assert {v["name"] for v in variables} == set(expected)
    for var in variables:
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", var["query"]["query"])
        assert match, var["query"]
        selector, label = _grafana(match.group(1), run.shim), match.group(2)
        values = {r["metric"].get(label) for r in run.prom.query(selector, at=run.at)}
        assert expected[var["name"]] in values, (var["name"], values)


# --- the alert rules --------------------------------------------------------------------------------------


def test_shipped_rules_load_evaluate_and_stay_quiet_under_healthy_load(run):
    groups = run.prom.api("rules")["data"]["groups"]
    shipped = yaml.safe_load(RULES.read_text())["groups"]
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in shipped)
    assert sum(len(g["rules"]) for g in groups) == sum(len(g["rules"]) for g in shipped)
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    # The recording rule behind the latency SLO alerts has a value for this job.
    slow = run.prom.query(f'reranker:request_latency_slow:ratio_rate5m{{job="{SHIM_JOB}"}}', at=run.after_at)
    assert [r["metric"] for r in slow] == [{"__name__": "reranker:request_latency_slow:ratio_rate5m",
                                            "namespace": NAMESPACE, "job": SHIM_JOB}]
    # ... and it agrees with the latencies the client saw (server-side latency is a little shorter).
    latencies = [end - start for start, end, _ in run.sent]
    client_slow = sum(1 for x in latencies if x > 1.0) / len(latencies)
    assert abs(float(slow[0]["value"][1]) - client_slow) <= 0.05, (slow, client_slow)
    # No alert fires or is pending. The latency SLO alerts are exempt only if this (shared, 2-core) host
    # was too slow for the SLO itself: then they are right to be pending.
    alerts = {a["metric"]["alertname"] for a in run.prom.query('ALERTS{alertstate=~"pending|firing"}',
                                                                at=run.after_at)}
    if client_slow > 0.03:
        alerts -= {"RerankerLatencySLOBurnFast", "RerankerLatencySLOBurnSlow"}
    assert not alerts, "a healthy service under a steady load must not alert"
    # The canary alert's inputs say healthy: engine up and verified.
    sel = f'{{job="{SHIM_JOB}"}}'
    assert run.prom.value(f"reranker_engine_up{sel}", at=run.after_at) == 1.0
    assert run.prom.value(f"reranker_engine_verified{sel}", at=run.after_at) == 1.0
