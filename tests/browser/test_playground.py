"""The playground page in a real browser (headless Debian Chromium) against the real service.

What a person does: open the page, type a query and documents, click Rank, read the ranking, copy a
snippet. Every expectation comes from the API's own answer for the same body, never from constants.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import httpx
import pytest

from server.dialects.tei import SeedResponse
from tests.browser.page import Playground, wait_for
from tests.conftest import (
    MAX_MODEL_LEN,
    MODEL_DIR,
    MODEL_NAME,
    ROOT,
    Service,
    engine_env,
    free_port,
)

pytestmark = pytest.mark.engine

QUERY = "What is the capital of France?"
DOCS = ["Bananas are rich in potassium and grow in tropical climates.",
        "Paris is the capital and largest city of France.",
        "The Eiffel Tower was built for the 1889 World's Fair in Paris."]
SCREENSHOT = ROOT / "docs" / "playground.png"


def api_rank(url: str, body: dict, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/rerank", json=body, headers=headers, timeout=60)


def fill(page: Playground, query: str, docs: list[str]) -> None:
    page.type("query", query)
    page.type("documents", "\n".join(docs))


def assert_shows(page: Playground, answer: dict, raw: bool = False) -> None:
    """The page lists exactly the API's ranking, each score as the API gave it (4 decimals)."""
    shown = page.results()
    assert [row.index for row in shown] == [r["index"] for r in answer["results"]]
    sign = "+" if raw else ""
    assert [row.score for row in shown] == [
        (sign if r["relevance_score"] >= 0 else "") + f"{r['relevance_score']:.4f}" for r in answer["results"]]
    assert [row.value for row in shown] == pytest.approx([r["relevance_score"] for r in answer["results"]],
                                                         abs=1e-6)


def run_snippet(argv: list[str], env: dict[str, str]) -> str:
    """Run a copied snippet as a user would paste it; its stdout."""
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def snippet_body(snippet: str) -> dict:
    """The JSON a curl snippet sends (the -d '...' argument, shell-unquoted)."""
    quoted = snippet.split(" -d ", 1)[1]
    return json.loads(quoted[1:-1].replace("'\\''", "'"))


def test_page_ranks_like_the_api_and_shows_tokens_and_latency(service, browser):
    config = httpx.get(service.url + "/playground/config").json()
    page = Playground(browser, service.url + "/playground")
    assert page.el("instruction").get_attribute("value") == config["default_instruction"]
    assert not page.el("key-row").is_displayed()  # auth is off on this service
    assert "engine ready" in page.el("engine").text
    fill(page, QUERY, DOCS)
    page.rank()
    answer = api_rank(service.url, {"query": QUERY, "documents": DOCS}).json()
    assert page.error() == ""
    assert_shows(page, answer)
    assert [row.text for row in page.results()] == [DOCS[r["index"]] for r in answer["results"]]
    stats = page.el("stats").text
    assert f"{answer['usage']['total_tokens']} tokens" in stats
    assert re.search(r"server \d+\.\d ms · round trip \d+ ms", stats), stats
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))

    # the raw-logit toggle: logit(yes) - logit(no) as the API gives it, whose sigmoid is the P(yes)
    page.el("raw").click()
    page.rank()
    raw = api_rank(service.url, {"query": QUERY, "documents": DOCS, "raw_scores": True}).json()
    assert_shows(page, raw, raw=True)
    probability = {r["index"]: r["relevance_score"] for r in answer["results"]}
    for r in raw["results"]:
        assert 1 / (1 + math.exp(-r["relevance_score"])) == pytest.approx(probability[r["index"]], abs=1e-4)


def test_page_served_at_root_ranks_too(service, browser):
    page = Playground(browser, service.url + "/")
    fill(page, QUERY, DOCS[:2])
    page.rank()
    assert_shows(page, api_rank(service.url, {"query": QUERY, "documents": DOCS[:2]}).json())


def test_json_documents_and_truncation_marks(service, browser):
    """Pasted JSON (strings and objects with `text`); a document longer than the model's context is
    cut, and only that one carries the mark."""
    long_doc = "capital " * (MAX_MODEL_LEN + 200)
    docs = [{"text": DOCS[1], "source": "atlas"}, long_doc, DOCS[0]]
    page = Playground(browser, service.url + "/playground")
    page.type("query", QUERY)
    page.paste("documents", json.dumps(docs))
    page.rank()
    response = api_rank(service.url, {"query": QUERY, "documents": docs, "return_documents": False})
    answer = response.json()
    SeedResponse.model_validate(answer)  # the declared model (extra="forbid") knows `truncated`
    assert [r["index"] for r in answer["results"] if r.get("truncated")] == [1]
    assert_shows(page, answer)
    assert {row.index: row.truncated for row in page.results()} == {0: False, 1: True, 2: False}
    assert "1 truncated" in page.el("stats").text


def test_empty_query_shows_the_servers_detail(service, browser):
    page = Playground(browser, service.url + "/playground")
    fill(page, "", DOCS)
    page.rank()
    response = api_rank(service.url, {"query": "", "documents": DOCS})
    assert response.status_code == 400  # /rerank speaks vLLM's errors for seed bodies (vLLM: 400)
    assert page.error() == f"HTTP 400: {response.json()['detail']}"
    assert page.results() == []


def test_copied_snippets_reproduce_the_pages_ranking(service, browser):
    """Snippets carry the page's request (changed instruction, top_n) and give the same ranking when
    run: curl on /v1/rank and on /v1/rerank (Jina JSON), the Cohere SDK, vLLM's /score shape."""
    instruction = "Given a question, retrieve passages that answer it"
    page = Playground(browser, service.url + "/playground")
    fill(page, QUERY, DOCS)
    page.type("instruction", instruction)
    page.type("top-n", "2")
    page.rank()
    shown = [(row.index, row.value) for row in page.results()]
    assert len(shown) == 2
    answer = api_rank(service.url, {"query": QUERY, "documents": DOCS, "instruction": instruction,
                                    "top_n": 2}).json()
    assert shown == [(r["index"], pytest.approx(r["relevance_score"], abs=1e-6)) for r in answer["results"]]
    # the instruction moves the scores, so a snippet that dropped it would not match below
    default = api_rank(service.url, {"query": QUERY, "documents": DOCS, "top_n": 2}).json()
    assert [r["relevance_score"] for r in default["results"]] != pytest.approx([s for _, s in shown], abs=1e-6)

    env = {**os.environ, "RERANKER_API_KEY": "unused"}
    curl = page.snippet("curl")
    assert "no top_n" in curl and snippet_body(curl)["instruction"] == instruction
    legacy = json.loads(run_snippet(["bash", "-c", curl], env))["results"]
    assert [(DOCS.index(r["doc"]), pytest.approx(r["score"], abs=1e-6)) for r in legacy[:2]] == shown

    jina = page.snippet("jina")
    assert [(r["index"], pytest.approx(r["relevance_score"], abs=1e-6))
            for r in json.loads(run_snippet(["bash", "-c", jina], env))["results"]] == shown

    cohere = page.snippet("cohere")
    printed = [line.split() for line in run_snippet([sys.executable, "-c", cohere], env).splitlines()]
    assert [(int(i), pytest.approx(float(s), abs=1e-6)) for i, s in printed] == shown

    score = page.snippet("score")
    body = snippet_body(score)
    assert body == {"model": MODEL_NAME, "text_1": QUERY, "text_2": DOCS, "instruction": instruction}
    if httpx.get(service.url + "/playground/config").json()["score_route"]:
        by_index = {d["index"]: d["score"] for d in json.loads(run_snippet(["bash", "-c", score], env))["data"]}
        assert [(i, pytest.approx(by_index[i], abs=1e-6)) for i, _ in shown] == shown
    else:
        assert "does not answer /score" in score


def test_auth_wrong_key_shows_401_right_key_ranks_429_shows_retry_after(extra_shim, browser):
    """The page's calls get the same auth and rate limit as any client (2 scoring calls a minute
    per key here; refused keys are not counted)."""
    key = "playground-test-key-7f3a"
    shim = extra_shim(api_keys=key, rate_limit="2/minute")
    page = Playground(browser, shim.url + "/playground")
    assert page.el("key-row").is_displayed()
    fill(page, QUERY, DOCS)
    page.type("api-key", "wrong-key")
    page.rank()
    refused = api_rank(shim.url, {"query": QUERY, "documents": DOCS}, key="wrong-key")
    assert refused.status_code == 401
    assert page.error() == f"HTTP 401: {refused.json()['detail']}"

    page.type("api-key", key)
    page.rank()
    assert page.error() == ""
    assert_shows(page, api_rank(shim.url, {"query": QUERY, "documents": DOCS}, key=key).json())
    # the key stays in the page's memory: not stored, not in the address, not in any snippet
    leaks = browser.execute_script(
        "return [localStorage.length, sessionStorage.length, document.cookie, location.href,"
        " document.documentElement.outerHTML]")
    assert leaks[:3] == [0, 0, ""]
    assert key not in leaks[3] and key not in leaks[4]
    for name in ("curl", "cohere", "jina", "score"):
        snippet = page.snippet(name)
        assert key not in snippet and "RERANKER_API_KEY" in snippet, name

    page.rank()  # the third scoring call for this key within a minute (the API call above was one)
    limited = api_rank(shim.url, {"query": QUERY, "documents": DOCS}, key=key)
    assert limited.status_code == 429
    shown = re.fullmatch(r"HTTP 429: (.+)\nRetry after (\d+) s\.", page.error())
    assert shown, page.error()
    # the server's detail, word for word, but for its seconds: the API call came a moment after the
    # page's, and a second may have ticked over in between (as for Retry-After)
    seconds = r"retry in (\d+) s"
    assert re.sub(seconds, "", shown[1]) == re.sub(seconds, "", limited.json()["detail"])
    page_s, api_s = (int(re.search(seconds, text)[1]) for text in (shown[1], limited.json()["detail"]))
    assert abs(page_s - api_s) <= 1
    assert abs(int(shown[2]) - int(limited.headers["Retry-After"])) <= 1
    assert page.results() == []


def start_shim_without_engine() -> Service:
    """A real shim whose vLLM is not there (nothing listens on its port): the state a page sees
    while the engine is down or still loading."""
    port = free_port()
    env = engine_env(RERANKER_MODE="shim", RERANKER_MODEL=str(MODEL_DIR), RERANKER_HOST="127.0.0.1",
                     RERANKER_SERVED_MODEL_NAME=MODEL_NAME, RERANKER_PORT=str(port), RERANKER_RATE_LIMIT="",
                     RERANKER_VLLM_URL=f"http://127.0.0.1:{free_port()}")
    log_path = ROOT / ".cache" / "test-logs" / f"shim-no-engine-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    shim = Service(f"http://127.0.0.1:{port}", "", proc, log_path)

    def alive():
        try:
            return httpx.get(shim.url + "/livez", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None
    wait_for(alive, "the shim to listen", timeout=60)
    assert proc.poll() is None, shim.log()
    return shim


def test_page_says_when_the_engine_cannot_be_reached(browser):
    shim = start_shim_without_engine()
    try:
        page = Playground(browser, shim.url + "/playground")
        ready = httpx.get(shim.url + "/ready").json()
        wait_for(lambda: page.el("engine").text.startswith("not ready"), "the engine pill")
        assert page.el("engine").text == f"not ready: {ready['reason']}"
        fill(page, QUERY, DOCS)
        page.rank()
        refused = api_rank(shim.url, {"query": QUERY, "documents": DOCS})
        assert refused.status_code == 503
        assert page.error() == (f"HTTP 503: {refused.json()['detail']}\nThe service cannot reach the engine."
                                f"\nRetry after {refused.headers['Retry-After']} s.")
    finally:
        shim.stop(timeout=30)


def test_page_through_the_shipped_nginx_config(service, browser, tmp_path):
    """deploy/nginx/reranker.conf serves the page, and its relative calls reach the API behind it."""
    from tests.deploy.test_nginx import start_nginx

    proxy = start_nginx(tmp_path / "nginx", [int(service.url.rsplit(":", 1)[1])])
    try:
        page = Playground(browser, proxy.url + "/")
        fill(page, QUERY, DOCS)
        page.rank()
        assert_shows(page, api_rank(service.url, {"query": QUERY, "documents": DOCS}).json())
        assert "engine ready" in page.el("engine").text
    finally:
        proxy.stop()


def test_playground_off_is_404_and_scoring_still_works(extra_shim):
    shim = extra_shim(playground="false")
    for path in ("/", "/playground", "/playground/app.js", "/playground/config"):
        response = httpx.get(shim.url + path)
        assert response.status_code == 404, path
        assert response.json()["detail"] == "Not Found"
    assert api_rank(shim.url, {"query": QUERY, "documents": DOCS}).status_code == 200
