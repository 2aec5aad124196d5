"""`reranker eval` end to end against the real service (CPU vLLM, tiny model with random weights,
so the numbers say nothing about quality; what is checked is that the report is complete and
true to the scores the service gives): a BEIR-format dataset written here, a first-stage run,
two services side by side -> table, report.json, per_query.tsv, gain.png, reranked TREC runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from offline.evaluate import measures, score_run
from tests.conftest import ROOT

TOPICS = ["volcanoes", "honey bees", "tides", "glaciers", "coffee", "lighthouses"]


def make_dataset(root: Path) -> None:
    """6 queries, 8 documents each in the first-stage run (one query's relevant document is
    not retrieved, one retrieved document is missing from the corpus), a query with no
    judgments and one whose text is missing."""
    corpus, run, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for q, topic in enumerate(TOPICS):
        for d in range(8):
            corpus.append({"_id": f"{q}-{d}", "title": f"{topic} note {d}",
                           "text": f"Facts about {topic}: paragraph {d}." if d % 3 else f"Why {topic} matter."})
            run.append(f"q{q} Q0 {q}-{d} {d + 1} {20 - d}.5 bm25")
        qrels += [f"q{q}\t{q}-{7 - q % 4}\t2", f"q{q}\t{q}-{q % 3}\t1"]
    corpus.append({"_id": "0-unretrieved", "title": "", "text": "volcanoes erupt"})
    qrels.append("q0\t0-unretrieved\t1")
    run.append("q1 Q0 not-in-corpus 9 1.0 bm25")
    run.append("q-nojudgments Q0 0-1 1 3.0 bm25")
    qrels.append("q-notext\t0-1\t1")
    run.append("q-notext Q0 0-1 1 3.0 bm25")
    queries = [{"_id": f"q{q}", "text": f"tell me about {topic}"} for q, topic in enumerate(TOPICS)]
    queries.append({"_id": "q-nojudgments", "text": "anything"})
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(b"\n".join(orjson.dumps(x) for x in corpus) + b"\n")
    (root / "queries.jsonl").write_bytes(b"\n".join(orjson.dumps(x) for x in queries) + b"\n")
    (root / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n")
    (root / "bm25.trec").write_text("\n".join(run) + "\n")


def run_eval(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "launcher", "eval", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_eval_end_to_end_two_services_side_by_side(service, extra_shim, tmp_path):
    data, out = tmp_path / "data", tmp_path / "report"
    make_dataset(data)
    other = extra_shim()
    done = run_eval("--data", str(data), "--run", str(data / "bm25.trec"), "--depth", "10",
                    "--service", f"A={service.url}", "--service", f"B={other.url}", "--recall", "3", "8",
                    "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = orjson.loads((out / "report.json").read_bytes())
    metrics = ["nDCG@10", "MRR@10", "Recall@3", "Recall@8"]
    assert report["metrics"] == metrics
    assert report["queries"]["evaluated"] == 6
    assert set(report["queries"]["skipped"]) == {"q-nojudgments", "q-notext"}
    assert report["documents_missing_from_corpus"] == ["not-in-corpus"]
    systems = report["systems"]
    assert list(systems) == ["first-stage", "A", "B"]
    for name in ("A", "B"):
        system = systems[name]
        assert system["model"] == "qwen3-reranker-tiny" and system["pairs"] == 6 * 8
        assert set(system["per_query"]) == {f"q{q}" for q in range(6)}
        assert system["delta"] == pytest.approx({m: system["overall"][m] - systems["first-stage"]["overall"][m]
                                                 for m in metrics})
        counts = system["queries"]
        assert counts["improved"] + counts["hurt"] + counts["unchanged"] == 6
    # the same engine behind both: the same scores, so the same numbers
    assert systems["A"]["per_query"] == systems["B"]["per_query"]
    # q0's unretrieved relevant document caps its recall below 1 whatever the order
    assert systems["first-stage"]["per_query"]["q0"]["Recall@8"] == pytest.approx(2 / 3)

    # the report is true to the service's scores: q2 reranked by hand gives A's numbers
    docs = [f"2-{d}" for d in range(8)]
    corpus = {r["_id"]: r for r in map(orjson.loads, (data / "corpus.jsonl").read_bytes().splitlines())}
    answer = httpx.post(service.url + "/v1/rerank", timeout=60, json={
        "query": "tell me about tides",
        "documents": [f"{corpus[d]['title']}\n{corpus[d]['text']}" for d in docs]}).json()
    by_hand = {docs[r["index"]]: r["relevance_score"] for r in answer["results"]}
    qrels = {"q2": {"2-5": 2, "2-2": 1}}
    _, per_query = score_run(qrels, {"q2": by_hand}, measures(10, [3, 8]))
    assert systems["A"]["per_query"]["q2"] == pytest.approx(per_query["q2"])

    # the table, the per-query TSV, the reranked runs, the plot
    assert "nDCG@10" in done.stdout and "first-stage" in done.stdout and "A (qwen3-reranker-tiny)" in done.stdout
    per_query_rows = done.stdout.split("nDCG@10 per query")[1]
    assert all(f" q{q} " in per_query_rows for q in range(6))
    rows = (out / "per_query.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:2] == ["query", "first-stage:nDCG@10"] and len(rows) == 7
    trec = (out / "run.A.trec").read_text().splitlines()
    assert len(trec) == 48 and trec[0].split()[1:4:2] == ["Q0", "1"]
    png = (out / "gain.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_eval_refuses_a_dataset_it_cannot_read_in_one_line(service, tmp_path):
    done = run_eval("--data", str(tmp_path), "--run", str(tmp_path / "none.trec"), "--service", service.url,
                    "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"reranker eval: no such file: {tmp_path / 'corpus.jsonl'}"]
