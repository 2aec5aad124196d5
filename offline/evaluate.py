"""`reranker eval`: does reranking help this search system? Reranks a first-stage run on a
BEIR-format dataset with one or more services and reports nDCG@k, MRR@k and Recall@K before and
after, overall and per query: a table on stdout, report.json, per_query.tsv, gain.png (per-query
nDCG gain, one panel per service) and each reranked run as a TREC run file.

Inputs (BEIR's layout): corpus.jsonl ({"_id", "title", "text"}), queries.jsonl ({"_id",
"text"}), qrels/<split>.tsv (query-id, corpus-id, score; a header line), and a TREC run file
("qid Q0 docid rank score tag", e.g. BM25's top 100). Only the documents the run names are
loaded from the corpus, so a large corpus is read once and not held.

Metrics are trec_eval's (ir_measures over pytrec_eval): nDCG with linear gains and the ideal
ranking from all judged documents, MRR@k as the reciprocal rank of the first document judged
relevant (grade >= 1) in the top k, Recall@K as the share of the relevant documents in the top K.
The queries evaluated are the run's queries that have judgments and text; every system, the
first stage included, is scored on the same queries and the same top-`depth` documents (a
document the corpus lacks is left out of all of them, a query the service refuses too, and the
report says which).
"""

from __future__ import annotations

import asyncio
import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from offline.client import RETRYABLE_STATUSES, ServiceClient
from offline.progress import Reporter

FIRST_STAGE = "first-stage"
# documents per request; a query's top `depth` is sent in requests of at most this many
# (the service's own limit, max_documents, is 1,000 by default)
DOCS_PER_REQUEST = 100
PER_QUERY_ROWS = 50


class EvalError(Exception):
    def __init__(self, message: str, incomplete: bool = False) -> None:
        super().__init__(message)
        self.incomplete = incomplete  # a service failed mid-way (try again), not bad input


@dataclass
class EvalOptions:
    data: Path
    run: Path
    out: Path
    services: list[tuple[str, str]]            # (name, URL)
    split: str = "test"
    qrels: Path | None = None
    depth: int = 100
    cutoff: int = 10
    recall: list[int] = field(default_factory=lambda: [10, 100])
    instruction: str | None = None
    concurrency: int = 16
    api_key: str | None = None
    timeout_s: float = 600.0
    max_attempts: int = 8
    force_terminal: bool | None = None
    per_query_table: bool | None = None       # None: when there are at most PER_QUERY_ROWS queries


# ---------------------------------------------------------------------------- reading the data

def read_queries(path: Path) -> dict[str, str]:
    queries = {}
    for record in _jsonl(path):
        queries[str(record["_id"])] = record.get("text") or ""
    return queries


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR's qrels TSV (query-id, corpus-id, score, after a header line), or a TREC qrels file
    (qid, iteration, docid, grade)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            row = line.split()
            if not row:
                continue
            if len(row) not in (3, 4):
                raise EvalError(f"{path}:{lineno}: a qrels line has 3 (BEIR) or 4 (TREC) fields")
            qid, docid, grade = (row[0], row[2], row[3]) if len(row) == 4 else row
            try:
                qrels.setdefault(qid, {})[docid] = int(float(grade))
            except ValueError:
                if lineno > 1:  # only the first line may be a header
                    raise EvalError(f"{path}:{lineno}: the grade must be a number, not {grade!r}") from None
    return qrels


def read_run(path: Path, depth: int) -> dict[str, list[tuple[str, float]]]:
    """A TREC run file -> each query's top `depth` (docid, score), best first (by score, as
    trec_eval orders a run; the rank column breaks ties)."""
    entries: dict[str, list[tuple[float, int, str]]] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise EvalError(f"{path}:{lineno}: a TREC run line has 6 fields (qid Q0 docid rank score tag)")
            qid, _, docid, rank, score, _ = parts
            try:
                entries.setdefault(qid, []).append((float(score), int(rank), docid))
            except ValueError:
                raise EvalError(f"{path}:{lineno}: rank and score must be numbers") from None
    run = {}
    for qid, items in entries.items():
        items.sort(key=lambda e: (-e[0], e[1]))
        seen: set[str] = set()
        top = []
        for score, _, docid in items:
            if docid not in seen:
                seen.add(docid)
                top.append((docid, score))
            if len(top) == depth:
                break
        run[qid] = top
    return run


def read_corpus(path: Path, wanted: set[str]) -> dict[str, str]:
    """The text of the wanted documents: BEIR's "title" and "text" joined, as BEIR's rerankers
    see a document."""
    texts = {}
    for record in _jsonl(path):
        docid = str(record.get("_id"))
        if docid in wanted:
            title, text = record.get("title") or "", record.get("text") or ""
            texts[docid] = f"{title}\n{text}".strip() if title else text
    return texts


def _jsonl(path: Path):
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if raw.strip():
                try:
                    yield orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise EvalError(f"{path}:{lineno}: not JSON: {exc}") from None


# ---------------------------------------------------------------------------- metrics

def measures(cutoff: int, recall: list[int]) -> dict[str, object]:
    """Report label -> ir_measures measure."""
    from ir_measures import RR, R, nDCG

    labels = {f"nDCG@{cutoff}": nDCG @ cutoff, f"MRR@{cutoff}": RR @ cutoff}
    labels.update({f"Recall@{k}": R @ k for k in recall})
    return labels


def score_run(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]],
              labelled: dict[str, object]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(overall means, per query values) of each labelled measure, for the run's queries that
    have judgments."""
    import ir_measures

    label_of = {str(m): label for label, m in labelled.items()}
    # trec_eval's tools count a judged query missing from the run as all zeros; the queries
    # evaluated are the run's
    qrels = {qid: judged for qid, judged in qrels.items() if qid in run}
    overall = {label_of[str(m)]: float(v) for m, v in
               ir_measures.calc_aggregate(list(labelled.values()), qrels, run).items()}
    per_query: dict[str, dict[str, float]] = {}
    for metric in ir_measures.iter_calc(list(labelled.values()), qrels, run):
        per_query.setdefault(metric.query_id, {})[label_of[str(metric.measure)]] = float(metric.value)
    ordered = {label: overall.get(label, 0.0) for label in labelled}
    return ordered, {q: {label: v[label] for label in labelled} for q, v in sorted(per_query.items())}


# ---------------------------------------------------------------------------- reranking

@dataclass
class Reranked:
    name: str
    url: str
    model: str = ""
    run: dict[str, dict[str, float]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)   # qid -> why the service refused it
    pairs: int = 0
    seconds: float = 0.0


async def rerank(name: str, url: str, work: dict[str, tuple[str, list[tuple[str, str]]]],
                 opts: EvalOptions) -> Reranked:
    """Score every (query, document) of `work` (qid -> (query text, [(docid, text)])) with the
    service at `url`, with bounded concurrency and bulk priority."""
    result = Reranked(name, url, model=_served_model(url, opts.api_key))
    total = sum(len(docs) for _, docs in work.values())
    reporter = Reporter(f"eval {name}", total, force_terminal=opts.force_terminal)
    window = asyncio.Semaphore(opts.concurrency)
    unreachable: list[str] = []
    started = time.monotonic()

    async def one(client: ServiceClient, qid: str, query: str, docs: list[tuple[str, str]]) -> None:
        scores: dict[str, float] = {}
        async with window:
            for start in range(0, len(docs), DOCS_PER_REQUEST):
                chunk = docs[start:start + DOCS_PER_REQUEST]
                body = {"query": query, "documents": [text for _, text in chunk]}
                if opts.instruction is not None:
                    body["instruction"] = opts.instruction
                answer = await client.post("/v1/rerank", orjson.dumps(body))
                if answer.status is None or answer.status in RETRYABLE_STATUSES:
                    unreachable.append(f"{qid}: {answer.status or answer.error}")
                    return
                if answer.status != 200:
                    result.refused[qid] = f"HTTP {answer.status}: {_detail(answer.body)}"
                    reporter.advance(1, 0, len(docs), 1)
                    return
                for item in orjson.loads(answer.body)["results"]:
                    scores[chunk[item["index"]][0]] = float(item["relevance_score"])
        result.run[qid] = scores
        result.pairs += len(docs)
        reporter.advance(1, len(docs), len(docs))

    try:
        async with ServiceClient(url, concurrency=opts.concurrency, api_key=opts.api_key,
                                 timeout_s=opts.timeout_s, max_attempts=opts.max_attempts) as client:
            await asyncio.gather(*(one(client, qid, query, docs) for qid, (query, docs) in work.items()))
    finally:
        reporter.close()
    result.seconds = time.monotonic() - started
    if unreachable:
        raise EvalError(f"{name} ({url}) could not score {len(unreachable)} queries after retries, "
                        f"e.g. {unreachable[0]}", incomplete=True)
    return result


def _served_model(url: str, api_key: str | None) -> str:
    """The served model's name (vLLM's /v1/models), to label the report; "" if not told."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        return httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=10).json()["data"][0]["id"]
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return ""


def _detail(body: bytes) -> str:
    try:
        answer = orjson.loads(body)
        return str(answer.get("detail") or answer.get("message") or answer)[:300]
    except (orjson.JSONDecodeError, AttributeError):
        return body[:300].decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------- the job

async def run_eval(opts: EvalOptions) -> dict:
    data = opts.data
    qrels_path = opts.qrels or data / "qrels" / f"{opts.split}.tsv"
    for path in (data / "corpus.jsonl", data / "queries.jsonl", qrels_path, opts.run):
        if not path.is_file():
            raise EvalError(f"no such file: {path}")
    qrels = read_qrels(qrels_path)
    queries = read_queries(data / "queries.jsonl")
    first_stage = read_run(opts.run, opts.depth)
    skipped: dict[str, str] = {}
    for qid in first_stage:
        if qid not in qrels:
            skipped[qid] = "no judgments in the qrels"
        elif not queries.get(qid, "").strip():
            skipped[qid] = "no query text in queries.jsonl"
    evaluated = [qid for qid in first_stage if qid not in skipped]
    if not evaluated:
        raise EvalError("no query of the run has both judgments and text: nothing to evaluate")
    wanted = {docid for qid in evaluated for docid, _ in first_stage[qid]}
    corpus = read_corpus(data / "corpus.jsonl", wanted)
    missing = sorted(wanted - corpus.keys())
    work = {qid: (queries[qid], [(d, corpus[d]) for d, _ in first_stage[qid] if d in corpus])
            for qid in evaluated}
    work = {qid: w for qid, w in work.items() if w[1]}
    for qid in evaluated:
        if qid not in work:
            skipped[qid] = "none of its documents is in the corpus"

    reranked = [await rerank(name, url, work, opts) for name, url in opts.services]
    for system in reranked:
        for qid, why in system.refused.items():
            skipped[qid] = f"{system.name} refused it: {why}"
    final = [qid for qid in work if qid not in skipped]
    if not final:
        raise EvalError("every query was refused by a service: " + next(iter(skipped.values())))

    labelled = measures(opts.cutoff, opts.recall)
    runs = {FIRST_STAGE: {qid: {d: s for d, s in first_stage[qid] if d in corpus} for qid in final}}
    for system in reranked:
        runs[system.name] = {qid: system.run[qid] for qid in final}
    scored = {name: score_run(qrels, run, labelled) for name, run in runs.items()}
    report = _report(opts, qrels_path, labelled, scored, reranked, final, skipped, missing)

    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "report.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    _write_per_query(opts.out / "per_query.tsv", report)
    for system in reranked:
        _write_trec_run(opts.out / f"run.{_safe(system.name)}.trec", runs[system.name], system.name)
    plot_gain(report, opts.out / "gain.png", f"nDCG@{opts.cutoff}")
    print_table(report, opts.per_query_table)
    return report


def _report(opts, qrels_path, labelled, scored, reranked, final, skipped, missing) -> dict:
    base_overall, base_per_query = scored[FIRST_STAGE]
    systems = {FIRST_STAGE: {"source": str(opts.run), "overall": base_overall, "per_query": base_per_query}}
    headline = next(iter(labelled))
    for system in reranked:
        overall, per_query = scored[system.name]
        gains = [per_query[q][headline] - base_per_query[q][headline] for q in per_query]
        systems[system.name] = {
            "service": system.url, "model": system.model, "overall": overall,
            "delta": {label: overall[label] - base_overall[label] for label in labelled},
            "queries": {"improved": sum(g > 1e-12 for g in gains), "hurt": sum(g < -1e-12 for g in gains),
                        "unchanged": sum(abs(g) <= 1e-12 for g in gains), "by": headline},
            "pairs": system.pairs, "seconds": round(system.seconds, 3),
            "pairs_per_s": round(system.pairs / system.seconds, 1) if system.seconds else None,
            "per_query": per_query,
        }
    return {
        "data": str(opts.data), "qrels": str(qrels_path), "run": str(opts.run), "depth": opts.depth,
        "instruction": opts.instruction, "metrics": list(labelled),
        "queries": {"evaluated": len(final), "skipped": dict(sorted(skipped.items()))},
        "documents_missing_from_corpus": missing,
        "systems": systems,
    }


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write_trec_run(path: Path, run: dict[str, dict[str, float]], tag: str) -> None:
    with open(path, "w") as f:
        for qid, scores in run.items():
            ranked = sorted(scores.items(), key=lambda item: -item[1])
            for rank, (docid, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {docid} {rank} {score:.6f} {_safe(tag)}\n")


def _write_per_query(path: Path, report: dict) -> None:
    systems = report["systems"]
    columns = [(name, label) for name in systems for label in report["metrics"]]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["query", *(f"{name}:{label}" for name, label in columns)])
        for qid in systems[FIRST_STAGE]["per_query"]:
            writer.writerow([qid, *(f"{systems[name]['per_query'][qid][label]:.4f}" for name, label in columns)])


def print_table(report: dict, per_query_table: bool | None = None) -> None:
    """The overall table, and the headline metric per query (by default when there are at most
    PER_QUERY_ROWS queries)."""
    from rich.console import Console
    from rich.table import Table

    systems = report["systems"]
    table = Table(title=f"{report['queries']['evaluated']} queries, top {report['depth']} of {report['run']}")
    table.add_column("system")
    for label in report["metrics"]:
        table.add_column(label, justify="right")
    table.add_column("queries +/-/=", justify="right")
    for name, system in systems.items():
        cells = []
        for label in report["metrics"]:
            value = f"{system['overall'][label]:.4f}"
            if "delta" in system:
                value += f" ({system['delta'][label]:+.4f})"
            cells.append(value)
        counts = system.get("queries")
        label = f"{name} ({system['model']})" if system.get("model") else name
        table.add_row(label, *cells, f"{counts['improved']}/{counts['hurt']}/{counts['unchanged']}" if counts else "")
    console = Console(width=160)
    console.print(table)
    per_query = systems[FIRST_STAGE]["per_query"]
    if per_query_table if per_query_table is not None else len(per_query) <= PER_QUERY_ROWS:
        headline = report["metrics"][0]
        rows = Table(title=f"{headline} per query (every metric: per_query.tsv)")
        rows.add_column("query")
        for name in systems:
            rows.add_column(name, justify="right")
        for qid in per_query:
            base = per_query[qid][headline]
            rows.add_row(qid, f"{base:.4f}", *(f"{s['per_query'][qid][headline]:.4f} "
                                               f"({s['per_query'][qid][headline] - base:+.4f})"
                                               for n, s in systems.items() if n != FIRST_STAGE))
        console.print(rows)
    if report["queries"]["skipped"]:
        print(f"skipped {len(report['queries']['skipped'])} queries (report.json says why)")


def plot_gain(report: dict, path: Path, label: str) -> None:
    """Per-query gain of `label` over the first stage, sorted, one panel per reranked system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = report["systems"][FIRST_STAGE]
    others = [(n, s) for n, s in report["systems"].items() if n != FIRST_STAGE]
    fig, axes = plt.subplots(len(others), 1, figsize=(10, 3.2 * len(others)), squeeze=False, sharey=True)
    for ax, (name, system) in zip(axes[:, 0], others):
        ranked = sorted(((system["per_query"][q][label] - base["per_query"][q][label], q) for q in base["per_query"]),
                        key=lambda item: -item[0])
        gains = [gain for gain, _ in ranked]
        if len(ranked) <= 40:  # few enough to name each query
            ax.set_xticks(range(len(ranked)), [q for _, q in ranked], rotation=60, fontsize=7)
        colours = ["#2a9d8f" if g > 0 else "#e76f51" if g < 0 else "#999999" for g in gains]
        ax.bar(range(len(gains)), gains, color=colours, width=1.0)
        ax.axhline(0, color="black", linewidth=0.8)
        counts = system["queries"]
        model = f" ({system['model']})" if system.get("model") else ""
        ax.set_title(f"{name}{model}: {label} {base['overall'][label]:.3f} -> {system['overall'][label]:.3f} "
                     f"({system['delta'][label]:+.3f}); {counts['improved']} queries better, "
                     f"{counts['hurt']} worse, {counts['unchanged']} same", fontsize=10)
        ax.set_ylabel(f"{label} gain")
        ax.set_xlabel("queries, by gain")
        ax.set_xlim(-0.5, max(len(gains), 1) - 0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
