"""Qwen3-VL-Reranker served for real: the launcher (vLLM + shim) on the tiny VL demo model, scores
compared with an official-style transformers reference in fp32 for text-only, image-only and mixed
documents, through each dialect's image form; hostile images get a 4xx and the service stays up.

Needs torchvision (vLLM's Qwen3-VL model and transformers' Qwen3-VL processor import it):
scripts/setup.sh installs it on the CPU build too (docs/vl.md, "torchvision on the CPU build"), so
CI runs this file; only where torchvision is not installed at all is the module skipped.
One service (the launcher, vLLM + shim) serves every test here.

The reference is written from Qwen's reference reranker (Qwen3VLReranker.format_mm_instruction,
tokenize and compute_scores): the conversation it builds, rendered by the checkpoint's chat
template, images resized by the qwen_vl_utils rule and given to the processor without a second
resize, the last hidden state times W[yes] - W[no], sigmoid.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math

import pytest
from PIL import Image

from tests.browser import conftest as browser_conftest
from tests.conftest import ROOT, start_launcher, wait_until_ready

pytestmark = [pytest.mark.launcher, pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None,
    reason="torchvision is not installed, and vLLM cannot load Qwen3-VL without it "
           "(scripts/setup.sh installs it: docs/vl.md)")]

VL_DIR = ROOT / "models" / "qwen3-vl-reranker-tiny"
VL_NAME = "qwen3-vl-reranker-tiny"
SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
          'provided. Note that the answer can only be "yes" or "no".')
# the playground test's headless Chromium (tests/browser), a fixture of this module too
browser = browser_conftest.browser
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
TOLERANCE = 1e-5


def picture(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    """A PNG with structure (gradients and stripes), so that images score differently."""
    image = Image.new(mode, (width, height))
    pixels = image.load()
    for y in range(height):
        for x in range(width):
            rgb = ((x * 7 + seed * 31) % 256, (y * 5 + seed * 17) % 256, ((x + y) * 3 + seed) % 256)
            pixels[x, y] = rgb + ((x * 3) % 256,) if mode == "RGBA" else rgb
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def as_jpeg(png: bytes, orientation: int = 1) -> bytes:
    """The picture as a JPEG (quality 90), with an EXIF orientation tag unless it is 1."""
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


IMAGES = {"tall": picture(64, 96, 1), "wide": picture(128, 64, 2), "odd": picture(100, 50, 3),
          "tiny": picture(30, 30, 4), "alpha": picture(96, 96, 5, "RGBA")}
# a JPEG of the reference's size (the shim sends its own bytes), and one whose EXIF tag says
# "rotate" (vLLM's loader would; the reference does not: the shim re-encodes it unrotated)
IMAGES.update(photo=as_jpeg(picture(96, 64, 6)), rotated=as_jpeg(picture(64, 96, 7), orientation=6))


def data_url(name: str) -> str:
    mime = "image/jpeg" if IMAGES[name][:2] == b"\xff\xd8" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(IMAGES[name]).decode()


class VlReference:
    """Official-style scoring of one pair in transformers, fp32."""

    def __init__(self, path) -> None:
        import torch
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        vocab = self.processor.tokenizer.get_vocab()
        head = self.model.lm_head.weight
        self.direction = (head[vocab["yes"]] - head[vocab["no"]]).detach().float()

    @staticmethod
    def resize(image: Image.Image) -> Image.Image:
        """qwen_vl_utils' fetch_image step: RGB over white, sides to multiples of 32, area in
        [4 x 32^2, 1800 x 32^2], Pillow's default (bicubic) resize."""
        if image.mode == "RGBA":
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.split()[3])
            image = background
        image = image.convert("RGB")
        h, w = image.height, image.width
        hb, wb = max(32, round(h / 32) * 32), max(32, round(w / 32) * 32)
        if hb * wb > 1800 * 1024:
            beta = math.sqrt(h * w / (1800 * 1024))
            hb, wb = math.floor(h / beta / 32) * 32, math.floor(w / beta / 32) * 32
        elif hb * wb < 4 * 1024:
            beta = math.sqrt(4 * 1024 / (h * w))
            hb, wb = math.ceil(h * beta / 32) * 32, math.ceil(w * beta / 32) * 32
        return image.resize((wb, hb))

    def _part(self, prefix: str, text: str, images: list[str]) -> tuple[list[dict], list[Image.Image]]:
        pictures = [self.resize(Image.open(io.BytesIO(IMAGES[i]))) for i in images]
        content = [{"type": "text", "text": prefix}]
        if not text and not pictures:
            return content + [{"type": "text", "text": "NULL"}], []
        content += [{"type": "image", "image": p} for p in pictures]
        return content + ([{"type": "text", "text": text}] if text else []), pictures

    def logit(self, query: tuple[str, list[str]], document: tuple[str, list[str]],
              instruction: str = DEFAULT_INSTRUCTION) -> float:
        q, q_pictures = self._part("<Query>:", *query)
        d, d_pictures = self._part("\n<Document>:", *document)
        messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                    {"role": "user", "content": [{"type": "text", "text": "<Instruct>: " + instruction},
                                                 *q, *d]}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pictures = q_pictures + d_pictures
        inputs = self.processor(text=[text], images=pictures or None, do_resize=False, return_tensors="pt")
        with self.torch.no_grad():
            state = self.model.model(**inputs).last_hidden_state[0, -1].float()
        return float(state @ self.direction)

    def score(self, *args, **kwargs) -> float:
        return 1 / (1 + math.exp(-self.logit(*args, **kwargs)))


@pytest.fixture(scope="module")
def vl_launched():
    """The launcher, started; not yet ready (vl_service waits for that)."""
    from launcher.demo_model import build

    build("vl-tiny", VL_DIR)
    service = start_launcher("vl", "--model", str(VL_DIR), "--served-model-name", VL_NAME,
                             "--max-model-len", "4096", "--drain-window", "0",  # teardown at once
                             wait_ready=False)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def vl_reference(vl_launched):
    """Loaded while the service starts (the launcher's vLLM is mostly one core's work)."""
    return VlReference(VL_DIR)


@pytest.fixture(scope="module")
def vl_service(vl_launched, vl_reference):
    wait_until_ready(vl_launched)
    return vl_launched


def content(text: str, images: list[str]) -> dict | str:
    if not images:
        return text
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    return {"content": parts + ([{"type": "text", "text": text}] if text else [])}


DOCUMENTS = {
    "text-only": [("A golden retriever runs on the sand.", []), ("Stock prices fell on Friday.", [])],
    "image-only": [("", ["tall"]), ("", ["wide"]), ("", ["tiny"])],
    "mixed": [("stripes", ["tall"]), ("two pictures", ["wide", "odd"]), ("no picture", []),
              ("", ["alpha"])],
    "jpeg": [("", ["photo"]), ("", ["rotated"]), ("a photo", ["photo", "tall"])],
}


@pytest.mark.parametrize("kind", sorted(DOCUMENTS))
def test_vllm_rerank_scores_equal_the_reference(vl_service, vl_reference, kind):
    docs = DOCUMENTS[kind]
    r = vl_service.post("/rerank", {"query": "a striped picture of a dog",
                                    "documents": [content(t, i) for t, i in docs]})
    assert r.status_code == 200, r.text
    got = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
    for i, doc in enumerate(docs):
        assert abs(got[i] - vl_reference.score(("a striped picture of a dog", []), doc)) <= TOLERANCE, (kind, i)


def test_an_image_query_and_raw_scores(vl_service, vl_reference):
    docs = [("a wide picture", []), ("", ["tall"]), ("caption", ["odd"])]
    r = vl_service.post("/rerank", {"query": content("", ["wide"]), "documents": [content(t, i) for t, i in docs],
                                    "instruction": "Find matching pictures", "raw_scores": True})
    assert r.status_code == 200, r.text
    got = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
    for i, doc in enumerate(docs):
        want = vl_reference.logit(("", ["wide"]), doc, "Find matching pictures")
        assert abs(got[i] - want) <= 1e-4 * max(1.0, abs(want)), i


def test_jina_image_documents_and_vllm_score(vl_service, vl_reference):
    r = vl_service.post("/v1/rerank", {"model": "jina-reranker-m0", "query": "a dog",
                                       "documents": [{"image": base64.b64encode(IMAGES["wide"]).decode()},
                                                     {"text": "a caption", "image": data_url("odd")}]})
    assert r.status_code == 200, r.text
    got = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
    assert abs(got[0] - vl_reference.score(("a dog", []), ("", ["wide"]))) <= TOLERANCE
    assert abs(got[1] - vl_reference.score(("a dog", []), ("a caption", ["odd"]))) <= TOLERANCE
    r = vl_service.post("/score", {"queries": content("", ["tall"]), "documents": ["tall stripes"]})
    assert r.status_code == 200, r.text
    assert abs(r.json()["data"][0]["score"] - vl_reference.score(("", ["tall"]), ("tall stripes", []))) <= TOLERANCE


def test_vllm_content_on_v1_rerank_scores_equal_the_reference(vl_service, vl_reference):
    """vLLM's body, without any vLLM-only field, on /v1/rerank (where vLLM serves it too)."""
    docs = [("", ["photo"]), ("caption", ["rotated"])]
    r = vl_service.post("/v1/rerank", {"query": "a dog", "documents": [content(t, i) for t, i in docs]})
    assert r.status_code == 200, r.text
    got = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
    for i, doc in enumerate(docs):
        assert abs(got[i] - vl_reference.score(("a dog", []), doc)) <= TOLERANCE, i


def test_hostile_images_and_text_only_dialects_get_a_4xx_and_the_service_stays_up(vl_service):
    wide = IMAGES["wide"]
    # cut in half, and without IEND (its pixels all there: Pillow alone loads that one)
    halved, no_end = (base64.b64encode(cut).decode() for cut in (wide[:len(wide) // 2], wide[:-12]))
    for path, body, status, said in (
            ("/v1/rerank", {"query": "q", "documents": [{"image": "data:image/png;base64," + halved}]},
             422, "truncated"),
            ("/v1/rerank", {"query": "q", "documents": [{"text": "t", "image": no_end}]}, 422, "truncated"),
            # vLLM's route: vLLM's status for every input error (docs/vllm-compat.md)
            ("/rerank", {"query": "q", "documents": [content("x", ["tall"]), {"content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + no_end}}]}]},
             400, "documents[1] image 0: PNG image is truncated"),
            ("/v1/rerank", {"query": "q", "documents": [{"image": "http://127.0.0.1:1/x.png"}]}, 400, "image"),
            ("/v2/rerank", {"query": "q", "documents": [{"image": data_url("wide")}]}, 422, "Cohere v2"),
            ("/v1/rank", {"query": "q", "docs": [{"image": data_url("wide")}]}, 422, "text only")):
        r = vl_service.post(path, body)
        assert r.status_code == status and said in r.json()["detail"], (path, r.text)
    assert vl_service.post("/rerank", {"query": "q", "documents": [content("x", ["tall"])]}).status_code == 200


def test_playground_ranks_chosen_pasted_and_dropped_images_like_the_api(vl_service, browser, tmp_path):
    """The playground with the VL model: images chosen in the file picker, pasted and dropped on
    the page become documents after the text ones; the ranking shown is the API's for the same
    body, each image row shows its picture; the Jina snippet carries them as {"image": ...}."""
    from tests.browser.page import Playground, wait_for

    page = Playground(browser, vl_service.url + "/playground")
    assert page.el("image-drop").is_displayed()
    # the VL model's default instruction (not the text model's), so the page's scores are the API's
    assert page.el("instruction").get_attribute("value") == DEFAULT_INSTRUCTION
    chosen = tmp_path / "wide.png"
    chosen.write_bytes(IMAGES["wide"])
    page.type("query", "a striped picture")
    page.type("documents", "A golden retriever runs on the sand.")
    page.el("image-files").send_keys(str(chosen))
    for event, name in (("paste", "odd"), ("drop", "tall")):
        # what the browser hands the page for a paste or a drop: a DataTransfer holding the file
        browser.execute_script("""
            const [kind, name, b64] = arguments;
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], name + ".png", {type: "image/png"}));
            const target = kind === "paste" ? document : document.getElementById("input");
            target.dispatchEvent(kind === "paste"
                ? new ClipboardEvent("paste", {clipboardData: files, bubbles: true, cancelable: true})
                : new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
        """, event, name, base64.b64encode(IMAGES[name]).decode())
    wait_for(lambda: len(browser.find_elements("css selector", "#image-list li")) == 3, "three images")
    page.rank()
    docs = ["A golden retriever runs on the sand.", content("", ["wide"]), content("", ["odd"]),
            content("", ["tall"])]
    answer = vl_service.post("/rerank", {"query": "a striped picture", "documents": docs,
                                         "return_documents": False}).json()
    shown = page.results()
    assert page.error() == ""
    assert [(row.index, row.value) for row in shown] == [
        (r["index"], pytest.approx(r["relevance_score"], abs=1e-6)) for r in answer["results"]]
    names = {1: "wide.png", 2: "odd.png", 3: "tall.png"}
    for row, element in zip(shown, browser.find_elements("css selector", "#results li")):
        pictures = element.find_elements("css selector", "img.thumb")
        assert len(pictures) == (row.index in names)
        if pictures:
            assert names[row.index] in row.text and pictures[0].get_attribute("src") == data_url(
                names[row.index][:-4])
    # the Jina snippet: the same documents, images in Jina's form
    browser.find_element("css selector", "[data-snippet=jina]").click()
    jina = page.snippet("jina")
    body = json.loads(jina.split(" -d ", 1)[1][1:-1].replace("'\\''", "'"))
    assert body["documents"] == ["A golden retriever runs on the sand."] + [
        {"image": data_url(n)} for n in ("wide", "odd", "tall")]


def test_image_requests_under_pooled_keep_alive_load_through_nginx(vl_service, vl_reference, tmp_path):
    """The shipped nginx config in front of the VL service, traffic shaped like a multimodal RAG
    client's: one client IP, one pooled keep-alive client with 8 requests in flight, 40 requests
    mixing Jina image documents (data URLs and bare base64), vLLM content bodies on /rerank and
    /v1/rerank and text-only documents, 1-4 documents with 0-2 pictures each (PNG and JPEG, one
    EXIF-rotated). Every answer is 200 with the reference's score for every document, and the
    service answered each request exactly once (nothing lost or retried by the proxy)."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from tests.deploy.test_nginx import start_nginx

    port = int(vl_service.url.rsplit(":", 1)[1])
    nginx = start_nginx(tmp_path / "nginx", [port])
    rng = random.Random(11)
    pool = [("", ["tall"]), ("", ["wide"]), ("stripes", ["odd"]), ("a photo", ["photo"]),
            ("", ["rotated"]), ("two pictures", ["wide", "photo"]), ("no picture at all", []),
            ("a caption", ["alpha"])]
    work = []
    for i in range(40):
        docs = rng.sample(pool, rng.randint(1, 4))
        form = ("jina", "vllm", "vllm-v1")[i % 3]
        if form == "jina":  # Jina's form takes one picture per document
            docs = [(t, imgs[:1]) for t, imgs in docs]
        work.append((form, f"query {i % 5}", docs))

    def body(form: str, query: str, docs: list) -> tuple[str, dict]:
        if form == "jina":
            def jina(text, imgs, n):
                if not imgs:
                    return {"text": text}
                encoded = base64.b64encode(IMAGES[imgs[0]]).decode() if n % 2 else data_url(imgs[0])
                return {"image": encoded, **({"text": text} if text else {})}
            return "/v1/rerank", {"model": "jina-reranker-m0", "query": query,
                                  "documents": [jina(t, i, n) for n, (t, i) in enumerate(docs)]}
        return ("/rerank" if form == "vllm" else "/v1/rerank"), {
            "query": query, "documents": [content(t, i) for t, i in docs]}

    def served() -> float:
        text = httpx.get(vl_service.url + "/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("reranker_request_total{") and 'status="200"' in line
                   and ('endpoint="/rerank"' in line or 'endpoint="/v1/rerank"' in line))

    before = served()
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    try:
        with httpx.Client(base_url=nginx.url, timeout=120, limits=limits) as client, ThreadPoolExecutor(8) as threads:
            def send(item):
                path, payload = body(*item)
                return client.post(path, json=payload)
            answers = list(threads.map(send, work))
    finally:
        nginx.stop()
    for (form, query, docs), r in zip(work, answers):
        assert r.status_code == 200, (form, r.text[:300])
        got = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
        assert sorted(got) == list(range(len(docs))), (form, got)
        for i, doc in enumerate(docs):
            want = vl_reference.score((query, []), doc)
            assert abs(got[i] - want) <= TOLERANCE, (form, query, doc, got[i], want)
    assert served() - before == len(work)
    assert nginx.access_log().count('" 200 ') >= len(work)
