"""The offline jobs' pure parts: input lines -> requests or error lines, the resume scan of an
output file, and the metrics of `reranker eval` on a hand-made dataset whose numbers are worked
out here by hand (trec_eval's definitions: linear gains, log2(rank + 1) discount, the ideal
ranking from every judged document)."""

from __future__ import annotations

import math

import orjson
import pytest

from offline.batch import Refusal, Request, answered_ids, output_line, parse_line, scoring_routes
from offline.client import Answer
from offline.evaluate import measures, read_qrels, read_run, score_run

ROUTES = scoring_routes()


def test_the_scoring_routes_are_the_services():
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/v1/rank", "/score", "/v1/score"} <= ROUTES
    assert "/tokenize" not in ROUTES and "/classify" not in ROUTES  # not scored by the core


def test_batch_file_line_becomes_its_request():
    line = {"custom_id": "a", "method": "POST", "url": "/score", "body": {"text_1": "q", "text_2": ["x", "y", "z"]}}
    item = parse_line(orjson.dumps(line), 1, ROUTES, "/v1/rerank")
    assert item == Request("a", "/score", orjson.dumps(line["body"]), 3)


def test_plain_line_goes_to_the_plain_route_with_its_id_as_custom_id():
    item = parse_line(b'{"id": 7, "query": "q", "documents": ["a", "b"], "instruction": "i"}', 1, ROUTES, "/v2/rerank")
    assert isinstance(item, Request)
    assert (item.custom_id, item.path, item.pairs) == ("7", "/v2/rerank", 2)
    assert orjson.loads(item.body) == {"query": "q", "documents": ["a", "b"], "instruction": "i"}


@pytest.mark.parametrize("raw, custom_id, code", [
    (b"{not json", "line-3", "invalid_json"),
    (b"[1, 2]", "line-3", "invalid_request"),
    (b'{"custom_id": "x", "method": "GET", "url": "/v1/rerank", "body": {}}', "x", "invalid_request"),
    (b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {}}', "x", "invalid_url"),
    (b'{"custom_id": "x", "method": "POST", "url": "/v1/rerank", "body": "text"}', "x", "invalid_request"),
    (b'{"method": "POST", "url": "/v1/rerank", "body": {}}', "line-3", "invalid_request"),
    (b'{"query": "q", "documents": ["a"]}', "line-3", "invalid_request"),
    (b'{"id": "p", "query": "q", "documents": "a"}', "p", "invalid_request"),
])
def test_a_line_that_is_not_a_request_is_refused_with_a_reason(raw, custom_id, code):
    item = parse_line(raw, 3, ROUTES, "/v1/rerank")
    assert isinstance(item, Refusal)
    assert (item.custom_id, item.code) == (custom_id, code)
    assert item.message.startswith("line 3")


def test_output_lines_follow_the_openai_batch_output_format():
    ok = orjson.loads(output_line("a", Answer(200, b'{"results": []}', "req-1")))
    assert set(ok) == {"id", "custom_id", "response", "error"}
    assert ok["id"].startswith("batch_req_") and ok["error"] is None
    assert ok["response"] == {"status_code": 200, "request_id": "req-1", "body": {"results": []}}
    refused = orjson.loads(output_line("b", Answer(422, b'{"detail": "empty query"}', "req-2")))
    assert refused["response"]["status_code"] == 422 and refused["error"] is None
    bad = orjson.loads(output_line("c", error=("invalid_json", "line 1 is not JSON")))
    assert bad["response"] is None and bad["error"] == {"code": "invalid_json", "message": "line 1 is not JSON"}
    down = orjson.loads(output_line("d", Answer(None, b"", "", "ConnectError: refused", attempts=8)))
    assert down["response"] is None and down["error"]["code"] == "service_unreachable"


def test_resume_keeps_final_answers_and_drops_retryable_and_cut_off_lines(tmp_path):
    out = tmp_path / "out.jsonl"
    final = [output_line("ok", Answer(200, b"{}", "r")), output_line("refused", Answer(422, b"{}", "r")),
             output_line("bad", error=("invalid_json", "x"))]
    retry = [output_line("busy", Answer(503, b"{}", "r")), output_line("limited", Answer(429, b"{}", "r")),
             output_line("down", Answer(None, b"", "", "ConnectError"))]
    cut = output_line("cut", Answer(200, b"{}", "r"))[:25]  # a kill in the middle of a write
    out.write_bytes(b"".join([*final, *retry]) + cut)
    assert answered_ids(out) == {"ok", "refused", "bad"}
    assert out.read_bytes() == b"".join(final)
    unchanged = out.stat().st_mtime_ns
    assert answered_ids(out) == {"ok", "refused", "bad"}  # nothing to drop: not rewritten
    assert out.stat().st_mtime_ns == unchanged


# ---------------------------------------------------------------------------- eval metrics

QRELS_TSV = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t1\nq1\td9\t1\nq2\te2\t1\nq3\tf1\t0\nq4\tg1\t1\n"
# q1: d2 d1 d4 d3 (d9 relevant, not retrieved); q2: e1 e3 e2; q3: nothing relevant; q4 (judged)
# is not in the run: not evaluated, not counted in the means
RUN = """q1 Q0 d2 1 9.0 bm25
q1 Q0 d1 2 8.0 bm25
q1 Q0 d4 3 7.0 bm25
q1 Q0 d3 4 6.0 bm25
q2 Q0 e1 1 3.0 bm25
q2 Q0 e3 2 2.0 bm25
q2 Q0 e2 3 1.0 bm25
q3 Q0 f1 1 1.0 bm25
"""


def dcg(gains: list[int]) -> float:
    return sum(g / math.log2(rank + 1) for rank, g in enumerate(gains, 1))


def test_metrics_of_a_hand_made_run_match_the_hand_computed_numbers(tmp_path):
    (tmp_path / "qrels.tsv").write_text(QRELS_TSV)
    (tmp_path / "run.trec").write_text(RUN)
    qrels = read_qrels(tmp_path / "qrels.tsv")
    assert qrels == {"q1": {"d1": 2, "d3": 1, "d9": 1}, "q2": {"e2": 1}, "q3": {"f1": 0}, "q4": {"g1": 1}}
    run = {q: dict(docs) for q, docs in read_run(tmp_path / "run.trec", depth=100).items()}
    overall, per_query = score_run(qrels, run, measures(10, [2, 10]))

    assert set(per_query) == {"q1", "q2", "q3"}
    ndcg = {"q1": dcg([0, 2, 0, 1]) / dcg([2, 1, 1]), "q2": dcg([0, 0, 1]) / dcg([1]), "q3": 0.0}
    mrr = {"q1": 1 / 2, "q2": 1 / 3, "q3": 0.0}
    recall2 = {"q1": 1 / 3, "q2": 0.0, "q3": 0.0}
    recall10 = {"q1": 2 / 3, "q2": 1.0, "q3": 0.0}
    for q in ("q1", "q2", "q3"):
        assert per_query[q]["nDCG@10"] == pytest.approx(ndcg[q])
        assert per_query[q]["MRR@10"] == pytest.approx(mrr[q])
        assert per_query[q]["Recall@2"] == pytest.approx(recall2[q])
        assert per_query[q]["Recall@10"] == pytest.approx(recall10[q])
    assert overall["nDCG@10"] == pytest.approx(sum(ndcg.values()) / 3)
    assert overall["MRR@10"] == pytest.approx(sum(mrr.values()) / 3)

    # a reranker that puts the relevant documents first: q1 d1 d3 d2 d4, q2 e2 first
    reranked = {"q1": {"d1": 0.9, "d3": 0.8, "d2": 0.2, "d4": 0.1}, "q2": {"e2": 0.7, "e1": 0.5, "e3": 0.1},
                "q3": {"f1": 0.5}}
    after, after_per_query = score_run(qrels, reranked, measures(10, [2, 10]))
    assert after_per_query["q1"]["nDCG@10"] == pytest.approx(dcg([2, 1]) / dcg([2, 1, 1]))
    assert after_per_query["q2"]["MRR@10"] == 1.0
    assert after_per_query["q1"]["Recall@2"] == pytest.approx(2 / 3)
    assert after["MRR@10"] == pytest.approx((1 + 1 + 0) / 3)


def test_mrr_at_k_ignores_a_first_relevant_document_below_k(tmp_path):
    qrels = {"q": {"rel": 1}}
    run = {"q": {f"d{i}": 100.0 - i for i in range(12)} | {"rel": 50.0}}  # the relevant one is 13th
    overall, _ = score_run(qrels, run, measures(10, [10]))
    assert overall["MRR@10"] == 0.0 and overall["nDCG@10"] == 0.0
    overall, _ = score_run(qrels, run, measures(20, [20]))
    assert overall["MRR@20"] == pytest.approx(1 / 13)


def test_a_run_is_cut_to_its_top_depth_by_score(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q Q0 low 1 1.0 x\nq Q0 high 2 5.0 x\nq Q0 mid 3 3.0 x\n")
    assert read_run(path, depth=2) == {"q": [("high", 5.0), ("mid", 3.0)]}
