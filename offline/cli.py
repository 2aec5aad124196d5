"""`reranker batch` and `reranker eval` (also `python -m offline batch|eval`).

    reranker batch requests.jsonl answers.jsonl --service http://127.0.0.1:8000
    reranker batch requests.jsonl answers.jsonl --launch -- --model Qwen/Qwen3-Reranker-0.6B
    reranker eval --data beir/scifact --run bm25.trec --service http://127.0.0.1:8000 --out report/

`--launch` starts a service of the job's own (`python -m launcher` with the flags after `--`,
the same flags and RERANKER_* variables as `reranker`) on free loopback ports, and stops it
when the job ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from offline import batch as batch_module

DEFAULT_SERVICE = "http://127.0.0.1:8000"
EXIT_USAGE = 2
EXIT_INCOMPLETE = 1  # lines that could not be scored now; the same command again retries them
_SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


def _split_launcher_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer KEY`")
    parser.add_argument("--concurrency", type=_positive, default=16, help="requests in flight (default 16)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    parser.add_argument("--max-attempts", type=_positive, default=8,
                        help="tries per request on 429/502/503/504 (honouring Retry-After) and on "
                             "connection failures (default 8)")
    parser.add_argument("--launch", action="store_true",
                        help="start a service of its own with the launcher flags given after `--`, "
                             "score, stop it")
    parser.add_argument("--launch-log", type=Path, default=None,
                        help="the launched service's log (default: next to the output)")
    parser.add_argument("--launch-timeout", type=float, default=900.0,
                        help="seconds to wait for the launched service's /ready (default 900)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reranker", description="Offline jobs against the reranking service.")
    sub = parser.add_subparsers(dest="command", required=True)

    batch = sub.add_parser("batch", help="score a JSONL file of requests (OpenAI/vLLM batch format or "
                                         "{id, query, documents})",
                           description=batch_module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch.add_argument("input", help="input JSONL (`-` for stdin)")
    batch.add_argument("output", type=Path, help="output JSONL (appended to; answered ids are skipped)")
    batch.add_argument("--service", default=DEFAULT_SERVICE, help=f"the service's URL (default {DEFAULT_SERVICE})")
    batch.add_argument("--plain-route", default=None,
                       help="the route plain {id, query, documents} lines go to (default /v1/rerank)")
    batch.add_argument("--progress-interval", type=float, default=10.0,
                       help="seconds between progress lines when stderr is not a terminal (default 10)")
    _common(batch)

    evaluate = sub.add_parser("eval", help="rerank a first-stage run on a BEIR dataset and compare "
                                           "nDCG@10, MRR@10, Recall@k before and after")
    evaluate.add_argument("--data", type=Path, required=True,
                          help="BEIR dataset folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    evaluate.add_argument("--split", default="test", help="qrels/<split>.tsv (default test)")
    evaluate.add_argument("--qrels", type=Path, default=None, help="a qrels TSV instead of qrels/<split>.tsv")
    evaluate.add_argument("--run", type=Path, required=True,
                          help="first-stage TREC run file (qid Q0 docid rank score tag), e.g. BM25")
    evaluate.add_argument("--depth", type=_positive, default=100,
                          help="rerank each query's top N first-stage documents (default 100)")
    evaluate.add_argument("--service", action="append", default=[], metavar="[NAME=]URL",
                          help="a service to evaluate; repeat to compare several side by side "
                               f"(default {DEFAULT_SERVICE}, or the launched one)")
    evaluate.add_argument("--cutoff", type=_positive, default=10, help="k of nDCG@k and MRR@k (default 10)")
    evaluate.add_argument("--recall", type=_positive, nargs="+", default=[10, 100], metavar="K",
                          help="Recall@K cut-offs (default 10 100)")
    evaluate.add_argument("--instruction", default=None, help="the Qwen3 task instruction (default: the service's)")
    evaluate.add_argument("--per-query", action=argparse.BooleanOptionalAction, default=None,
                          help="print the per-query table (default: when at most 50 queries)")
    evaluate.add_argument("--out", type=Path, required=True,
                          help="folder for report.json, per_query.tsv, gain.png and the reranked runs")
    _common(evaluate)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    own, launcher_args = _split_launcher_args(argv)
    args = build_parser().parse_args(own)
    if launcher_args and not args.launch:
        print("reranker: flags after `--` are for --launch", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    if args.command == "batch":
        raise SystemExit(_batch(args, launcher_args))
    raise SystemExit(_eval(args, launcher_args))


@contextlib.contextmanager
def _service(args, launcher_args: list[str], default_log: Path):
    """The URL to talk to: --service, or a service launched for this job."""
    if not args.launch:
        yield None
        return
    from offline.client import LaunchError, launched

    log = args.launch_log or default_log
    print(f"reranker: starting a service (log: {log})", file=sys.stderr)
    try:
        with launched(launcher_args, log, ready_timeout_s=args.launch_timeout) as url:
            print(f"reranker: service ready at {url}", file=sys.stderr)
            yield url
    except LaunchError as exc:
        print(f"reranker: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _reachable(url: str) -> bool:
    import httpx

    try:
        httpx.get(url.rstrip("/") + "/health", timeout=10)
        return True
    except httpx.HTTPError:
        return False


def _batch(args, launcher_args: list[str]) -> int:
    from offline.batch import PLAIN_ROUTE, BatchOptions, run_batch

    if args.input != "-" and not Path(args.input).is_file():
        print(f"reranker batch: no such input file: {args.input}", file=sys.stderr)
        return EXIT_USAGE
    with _service(args, launcher_args, args.output.with_name(args.output.name + ".service.log")) as launched:
        url = launched or args.service
        if not _reachable(url):
            print(f"reranker batch: cannot reach the service at {url} (is it running? --service URL, "
                  "or --launch)", file=sys.stderr)
            return EXIT_USAGE
        opts = BatchOptions(args.input, args.output, url, concurrency=args.concurrency,
                            api_key=args.api_key, timeout_s=args.timeout, max_attempts=args.max_attempts,
                            plain_route=args.plain_route or PLAIN_ROUTE,
                            progress_interval_s=args.progress_interval)
        try:
            summary = asyncio.run(run_batch(opts))
        except ValueError as exc:
            print(f"reranker batch: {exc}", file=sys.stderr)
            return EXIT_USAGE
    rate = summary.pairs / summary.seconds if summary.seconds else 0.0
    print(f"reranker batch: {summary.answered:,} answered, {summary.refused:,} refused or invalid, "
          f"{summary.unreachable:,} to retry, {summary.skipped:,} already done; {summary.pairs:,} pairs in "
          f"{summary.seconds:.1f} s ({rate:,.1f} pairs/s), {summary.retries:,} retries -> {args.output}",
          file=sys.stderr)
    for example in summary.errors:
        print(f"  e.g. {example}", file=sys.stderr)
    if summary.interrupted:
        print(f"reranker batch: stopped by {summary.interrupted}; run the same command again to resume",
              file=sys.stderr)
        return _SIGNAL_EXIT.get(summary.interrupted, 1)
    if summary.unreachable:
        print("reranker batch: some lines could not be scored now; run the same command again to retry "
              "them", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def _eval(args, launcher_args: list[str]) -> int:
    from offline.evaluate import EvalError, EvalOptions, run_eval

    args.out.mkdir(parents=True, exist_ok=True)
    with _service(args, launcher_args, args.out / "service.log") as launched:
        services = list(args.service)
        if launched:
            services.insert(0, f"launched={launched}")
        services = services or [DEFAULT_SERVICE]
        named = []
        for i, spec in enumerate(services):
            # NAME=URL, or a bare URL (the first "=" before any "://" separates the name)
            name, _, url = spec.partition("=") if "=" in spec.split("://")[0] else ("", "", spec)
            named.append((name or (f"service-{i + 1}" if len(services) > 1 else "reranked"), url))
        for _, url in named:
            if not _reachable(url):
                print(f"reranker eval: cannot reach the service at {url}", file=sys.stderr)
                return EXIT_USAGE
        opts = EvalOptions(data=args.data, run=args.run, out=args.out, services=named, split=args.split,
                           qrels=args.qrels, depth=args.depth, cutoff=args.cutoff, recall=args.recall,
                           instruction=args.instruction, concurrency=args.concurrency,
                           api_key=args.api_key, timeout_s=args.timeout, max_attempts=args.max_attempts,
                           per_query_table=args.per_query)
        try:
            asyncio.run(run_eval(opts))
        except EvalError as exc:
            print(f"reranker eval: {exc}", file=sys.stderr)
            return EXIT_INCOMPLETE if exc.incomplete else EXIT_USAGE
    return 0


if __name__ == "__main__":
    main()
