"""The Grafana dashboard's JSON model is well formed (no Grafana in CI; tests/observability/
test_prometheus.py runs its queries against a real Prometheus)."""

from __future__ import annotations

import json
import re

from tests.conftest import ROOT

DASHBOARD = ROOT / "charts" / "reranker" / "files" / "reranker-dashboard.json"
GRAFANA_MACROS = {"__rate_interval", "__range", "__interval"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_deploy_copy_is_the_chart_file():
    path = ROOT / "deploy" / "grafana" / "reranker-dashboard.json"
    assert path.is_symlink() and path.resolve() == DASHBOARD.resolve()


def test_panels_have_unique_ids_and_tile_the_grid_without_overlap():
    panels = load()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))


def test_every_query_uses_the_datasource_variable_and_known_variables():
    dash = load()
    defined = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "job", "instance"} <= defined
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["description"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"]))
            assert used <= defined | GRAFANA_MACROS, (p["title"], used - defined - GRAFANA_MACROS)
            assert 'namespace=~"$namespace"' in t["expr"], f"{p['title']}: not filtered by the variables"


def test_the_panels_the_issue_asks_for_are_there():
    titles = " | ".join(p["title"] for p in load()["panels"]).lower()
    for words in ("by endpoint and status", "p50 / p95 / p99", "documents and prompt tokens",
                  "in-flight", "refused", "queue depth by priority class", "queue wait",
                  "cache hit ratio", "engine up, canary", "restarts", "running / waiting", "kv-cache",
                  "engine prompt tokens", "gpu memory"):
        assert words in titles, words
