"""`vl`: Qwen3-VL-Reranker on one GPU. Documents of one image each (default 1024 x 1024, JPEG),
a text query, a closed loop at each concurrency: pairs/s, latency percentiles and errors through
the shim beside raw vLLM's `/rerank` on the same engine, the same request body to both, each
step's lines with GPU busy %, power and the engine core's CPU % (benchmarks/gpu/utilisation.py).

    run.sh vl [--shape vl-2b|vl-8b|vl-tiny] [--concurrency 8,32] [--docs 8] [--image-size 1024]
              [--image-format jpeg|png] [--targets shim,vllm,shim-jina] [--seconds 20]
              [--vllm-template FILE] [--fresh]

Steps, in order:
  model   the random-weight demo model of the shape (launcher/demo_model.py), built under
          $BENCH_WORK/models/ when absent (`{"kind": "model_built"}`)
  start   the launcher's defaults on it (a launcher left running by an earlier call with the same
          model and flags is reused); the `ready` line has the start-up seconds and timeline
  scores  a few pairs (two queries x `--docs` images) scored by raw vLLM, by the shim (the same
          body) and by the shim's Jina form: the differences are reported, not judged
  load    for each concurrency, each target: `--seconds` of closed-loop requests of `--docs`
          documents, every image a different picture (no cache can serve one), then a
          `vl_compare` line per concurrency (shim / raw vLLM)

Targets: `shim` = vLLM's body (documents `{"content": [{"type": "image_url", ...}]}`) on the
shim's /rerank (vLLM's API, docs/vl.md); `vllm` = the same body on vLLM's /rerank behind it
(engine 0): the same call to both; `shim-jina` = Jina's `{"image": data URL}` documents on the
shim's /v1/rerank (`return_documents` false).

The engine renders both targets' prompts with the launcher's template
(launcher/templates/qwen3_vl_reranker.jinja): for a text query and image-only documents it gives
the same string as vLLM's example template (examples/pooling/score/template/
qwen3_vl_reranker.jinja, docs/vl.md); `--vllm-template FILE` (a copy of vLLM's file, carried)
checks that on these pairs and starts the engine with vLLM's template instead.

Steps finished on this machine (results.jsonl) are skipped, so a call cut short by its budget is
repeated to do the rest; `--fresh` measures them again (with new pictures).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import httpx

from benchmarks.gpu import harness as h

NAME = "vl"
SUMMARY = "Qwen3-VL-Reranker, one image per document: shim beside raw vLLM /rerank, GPU busy %"

TARGETS = ("shim", "vllm", "shim-jina")
# Seconds each step may take at most on an H200 (a step that would not fit what is left of the
# call is reported as skipped): building the model, a cold and a warm start of vLLM.
BUILD_S = {"vl-tiny": 60, "vl-2b": 150, "vl-8b": 300}
START_S = {"cold": 300, "warm": 150}
QUERIES = [
    "a red car parked beside a river", "two people hiking on a mountain trail at sunrise",
    "a bar chart of quarterly revenue", "the floor plan of a small apartment",
    "a cat sleeping on a laptop keyboard", "handwritten notes about a chemistry lecture",
    "a crowded street market at night", "an invoice with a total of 240 euros",
    "a close-up of a circuit board", "a bowl of ramen with a soft-boiled egg",
    "a map of the city's metro lines", "a screenshot of an error dialog",
]
# Qwen3-VL: one image token per 32 x 32 pixels, plus <|vision_start|> and <|vision_end|>
TOKEN_PIXELS, WRAPPER_TOKENS = 32, 2


# --- the pictures --------------------------------------------------------------------------------
def picture(key: str, size: int, fmt: str) -> bytes:
    """A deterministic size x size picture for `key`: a two-colour gradient at a random angle,
    a dozen filled shapes and mild noise (-8..+7 a channel) (so JPEG sizes are those of a photo-like picture, not of
    a flat one), encoded as JPEG (quality 90) or PNG. Every key gives other pixels."""
    import numpy as np
    from PIL import Image, ImageChops, ImageDraw

    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng(seed)
    small = max(2, size // 8)  # the gradient at 1/8 scale, enlarged: a smooth field is cheap so
    axis = np.linspace(0.0, 1.0, small, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    t = math.cos(angle) * axis[None, :] + math.sin(angle) * axis[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    low, high = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    image = Image.fromarray((low + (high - low) * t[..., None]).astype(np.uint8), "RGB")
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        x1 = x0 + int(rng.integers(size // 16, size // 2))
        y1 = y0 + int(rng.integers(size // 16, size // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    noise = np.frombuffer(rng.bytes(size * size * 3), dtype=np.uint8).reshape(size, size, 3) & 15
    image = ImageChops.add(image, Image.fromarray(noise, "RGB"), offset=-8)  # -8..+7, clipped
    out = io.BytesIO()
    if fmt == "jpeg":
        image.save(out, format="JPEG", quality=90)
    else:
        image.save(out, format="PNG")
    return out.getvalue()


def _data_url(job: tuple[str, int, str]) -> str:
    key, size, fmt = job
    return f"data:image/{fmt};base64," + base64.b64encode(picture(key, size, fmt)).decode("ascii")


def data_urls(keys: list[str], size: int, fmt: str) -> list[str]:
    """The pictures of `keys` as data: URLs, made by a process per CPU."""
    jobs = [(k, size, fmt) for k in keys]
    workers = max(1, min(16, os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        return [_data_url(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        return list(pool.map(_data_url, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def image_tokens(size: int) -> int:
    """Tokens of one size x size picture: the shim keeps a picture whose sides are multiples of
    32 and whose area is within the reference's bounds (server/scoring/vl_images.py)."""
    from server.scoring.vl_images import smart_resize

    height, width = smart_resize(size, size)
    return (height // TOKEN_PIXELS) * (width // TOKEN_PIXELS) + WRAPPER_TOKENS


# --- request bodies ------------------------------------------------------------------------------
def body(target: str, query: str, urls: list[str]) -> dict:
    """One request: vLLM's body (shim and raw vLLM alike), or Jina's image documents."""
    if target == "shim-jina":
        return {"model": h.NAME, "query": query, "documents": [{"image": u} for u in urls],
                "return_documents": False}
    return {"model": h.NAME, "query": query,
            "documents": [{"content": [{"type": "image_url", "image_url": {"url": u}}]} for u in urls]}


def url_of(target: str) -> str:
    return {"vllm": h.VLLM + "/rerank", "shim": h.SHIM + "/rerank"}.get(target, h.SHIM + "/v1/rerank")


def scores_of(data: dict, n: int) -> list[float]:
    out = [math.nan] * n
    for item in data["results"]:
        out[item["index"]] = item["relevance_score"]
    return out


# --- steps ---------------------------------------------------------------------------------------
def build_model(clock: h.Clock, shape: str, model_dir: Path) -> bool:
    if (model_dir / "config.json").exists():
        return True
    if clock.left() < BUILD_S[shape]:
        h.emit({"kind": "skipped", "step": "vl model", "shape": shape,
                "reason": f"device-call budget: {clock.left():.0f} s left, the build needs "
                          f"~{BUILD_S[shape]} s; run the phase again"})
        return False
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "launcher.demo_model", "--shape", shape,
                           "--out", str(model_dir)], cwd=h.ROOT, capture_output=True, text=True,
                          timeout=max(30, clock.left() - 10))
    if done.returncode != 0:
        h.emit({"kind": "error", "step": "vl model", "shape": shape, "stderr": done.stderr[-2000:]})
        return False
    h.emit({"kind": "model_built", "shape": shape, "seconds": round(time.monotonic() - started, 1),
            "gib": round(sum(p.stat().st_size for p in model_dir.iterdir()) / 2**30, 2)})
    return True


def start(clock: h.Clock, config: str, flags: list[str]) -> bool:
    """The launcher on the VL model: reused when an earlier call left it running with the same
    model and flags, else started (cold the first time this machine starts this configuration)."""
    running = h.launcher_running()
    if running and running["config"] == config and running["flags"] == flags:
        h.log(f"launcher already running with {config}")
        return True
    h.stop_launcher()
    marker = h.WORK / f"started-{config}"  # this configuration started before: its compile cache
    kind = "warm" if marker.exists() else "cold"
    if clock.left() < START_S[kind]:
        h.emit({"kind": "skipped", "step": "vl start", "config": config,
                "reason": f"device-call budget: {clock.left():.0f} s left, a {kind} start needs "
                          f"~{START_S[kind]} s; run the phase again"})
        return False
    try:
        ready = h.start_launcher(config, flags, budget=min(420, clock.left() - 20), cold=kind == "cold")
    except RuntimeError as exc:
        h.emit({"kind": "error", "step": "vl start", "config": config, "error": str(exc)[-3000:]})
        h.stop_launcher()
        return False
    marker.touch()
    h.emit({**ready, "model": str(h.MODEL_DIR)})
    return True


def template_check(vllm_template: Path | None) -> None:
    """Whether vLLM's example template renders the prompt the engine's template renders, for the
    pairs this phase sends (a text query, a document of one image), as transformers renders a
    chat template (what vLLM calls)."""
    import jinja2

    from launcher.vllm_args import VL_TEMPLATE
    from server.scoring.vl_prompt import IMAGE_PLACEHOLDER

    line: dict = {"kind": "vl_template", "engine_template": str(vllm_template or VL_TEMPLATE)}
    if vllm_template is None:
        line["vllm_template_checked"] = False
        line["note"] = ("vLLM's example template is not in its wheel; docs/vl.md: it renders the "
                        "same prompt for one image or text per part (pass --vllm-template FILE)")
        h.emit(line)
        return
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    ours, theirs = (env.from_string(p.read_text()) for p in (VL_TEMPLATE, vllm_template))
    pairs = [{"messages": [{"role": "query", "content": q}, {"role": "document", "content": IMAGE_PLACEHOLDER}]}
             for q in QUERIES]
    same = [ours.render(**p) == theirs.render(**p) for p in pairs]
    line.update({"vllm_template_checked": True, "pairs": len(same), "identical": sum(same)})
    h.emit(line)


def score_check(clock: h.Clock, args: argparse.Namespace, config: str) -> None:
    """Two queries x `docs` pictures, scored by raw vLLM, by the shim (same body) and by the
    shim's Jina form: the largest difference and the ranking agreement."""
    if clock.left() < 60:
        h.emit({"kind": "skipped", "step": "vl scores", "reason": "budget"})
        return
    if not args.fresh and h.RESULTS.exists() and any(
            rec.get("kind") == "vl_scores" and rec.get("config") == config
            and rec.get("image_size") == args.image_size
            for rec in map(json.loads, h.RESULTS.read_text().splitlines())):
        h.log(f"{config}: scores compared earlier on this machine")
        return
    urls = data_urls([f"check|{args.seed}|{j}" for j in range(args.docs)], args.image_size,
                     args.image_format)
    got: dict[str, list[list[float]]] = {}
    tokens: dict[str, float] = {}
    try:
        for target in ("vllm", "shim", "shim-jina"):
            for q in QUERIES[:2]:
                r = httpx.post(url_of(target), json=body(target, q, urls), timeout=300)
                r.raise_for_status()
                data = r.json()
                got.setdefault(target, []).append(scores_of(data, len(urls)))
                usage = (data.get("usage") or {}).get("total_tokens")
                if usage:
                    tokens[target] = round(usage / len(urls), 1)
    except httpx.HTTPError as exc:
        h.emit({"kind": "error", "step": "vl scores", "error": repr(exc)[:500],
                "body": getattr(getattr(exc, "response", None), "text", "")[:500]})
        return
    def largest(a: list[list[float]], b: list[list[float]]) -> float:
        return float(f"{max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)):.3g}")

    h.emit({"kind": "vl_scores", "config": config, "image_size": args.image_size, "image_format": args.image_format,
            "shim_vs_vllm": {**h.drift(got["vllm"], got["shim"]),
                             "max_abs_diff_exact": largest(got["vllm"], got["shim"])},
            "jina_vs_shim": {**h.drift(got["shim"], got["shim-jina"]),
                             "max_abs_diff_exact": largest(got["shim"], got["shim-jina"])},
            "tokens_per_pair": tokens, "image_tokens_per_image": image_tokens(args.image_size),
            "vllm_scores": got["vllm"][0], "shim_scores": got["shim"][0]})


def step_key(rec: dict) -> tuple:
    return (rec.get("shape"), rec.get("config"), rec.get("image_size"), rec.get("image_format"),
            rec.get("docs"), rec.get("target"), rec.get("concurrency"))


def earlier_results() -> list[dict]:
    """This phase's result lines so far on this machine (results.jsonl lives while it stays warm)."""
    if not h.RESULTS.exists():
        return []
    out = []
    for line in h.RESULTS.read_text().splitlines():
        if '"vl"' in line and '"result"' in line:
            rec = json.loads(line)
            if rec.get("phase") == NAME and rec.get("kind") == "result":
                out.append(rec)
    return out


def load_step(clock: h.Clock, args: argparse.Namespace, config: str, target: str, c: int,
              attempt: int) -> None:
    """`--seconds` of requests at concurrency c: bodies built first (every picture new), then
    the closed loop inside `measured()`, so the line carries the GPU busy % of the span."""
    from benchmarks.loadgen import closed_loop

    common = {"shape": args.shape, "config": config, "image_size": args.image_size,
              "image_format": args.image_format, "docs": args.docs, "target": target,
              "concurrency": c, "workload": f"vl-{args.image_size}px-x{args.docs}"}
    # enough requests for max_pairs_s over the span; the span ends early when they run out
    requests = max(2 * c, math.ceil(args.max_pairs_s * args.seconds / args.docs))
    warmup = min(c, 8)
    n_images = (requests + warmup) * args.docs
    est_s = n_images * args.gen_s_per_image / min(16, os.cpu_count() or 1) + args.seconds + 30
    if clock.left() < est_s:
        h.emit({**common, "kind": "skipped",
                "reason": f"device-call budget: {clock.left():.0f} s left, step needs ~{est_s:.0f} s; "
                          "run the phase again"})
        return
    t0 = time.monotonic()
    # the pictures of each (target, concurrency, attempt) are their own: vLLM's prefix and
    # multimodal caches, and the shim's score cache, never see one twice
    keys = [f"load|{args.seed}|{config}|{target}|c{c}|{attempt}|{i}|{j}"
            for i in range(requests + warmup) for j in range(args.docs)]
    urls = data_urls(keys, args.image_size, args.image_format)
    from benchmarks.loadgen import _dumps

    bodies = [_dumps(body(target, QUERIES[i % len(QUERIES)], urls[i * args.docs:(i + 1) * args.docs]))
              for i in range(requests + warmup)]
    gen_s = time.monotonic() - t0
    per_image = sum(len(u) for u in urls) * 3 / 4 / len(urls)  # encoded bytes of one picture
    del urls
    est_tokens = args.docs * (image_tokens(args.image_size) + 70)
    h.log(f"{config}: {target} c={c}, {requests} requests of {args.docs} pictures "
          f"({gen_s:.1f} s to make them)")
    with h.measured():
        try:
            stats = closed_loop(url_of(target), lambda i: (bodies[i], args.docs, est_tokens), c,
                                requests, warmup, procs=1, timeout=300,
                                max_seconds=min(args.seconds, max(5.0, clock.left() - 30)))
        except Exception as exc:  # noqa: BLE001 - reported, the next step still runs
            h.emit({**common, "kind": "error", "error": f"{type(exc).__name__}: {exc}"[:1000]})
            return
        pairs_s = round(stats["ok"] * args.docs / stats["wall_s"], 2)
        h.emit({**common, "kind": "result", "url": url_of(target), "pairs_s": pairs_s,
                **{k: stats[k] for k in ("requests", "ok", "errors", "error_kinds", "req_s",
                                         "p50_ms", "p95_ms", "p99_ms", "max_ms", "wall_s", "tokens_s",
                                         "tokens_source")},
                "tokens_per_pair": round(stats["tokens_s"] / pairs_s, 1) if pairs_s else None,
                "image_tokens_per_image": image_tokens(args.image_size),
                "image_kib": round(per_image / 1024, 1),
                "body_kib": round(sum(map(len, bodies[:requests])) / requests / 1024, 1),
                **({"error_samples": stats["error_samples"]} if "error_samples" in stats else {})})


def _diff(a: float, b: float) -> float | None:
    """a - b in ms, None where either side had no successful request (NaN)."""
    return None if math.isnan(a) or math.isnan(b) else round(a - b, 1)


def compare() -> None:
    """Shim against raw vLLM at each concurrency, from every result on this machine (the latest
    of each)."""
    latest: dict[tuple, dict] = {}
    for rec in earlier_results():
        latest[step_key(rec)] = rec
    for key, shim in latest.items():
        if shim["target"] not in ("shim", "shim-jina"):
            continue
        raw = latest.get((*key[:5], "vllm", key[6]))
        if raw is None or not raw.get("pairs_s"):
            continue
        h.emit({"kind": "vl_compare", "shape": key[0], "config": key[1], "image_size": key[2],
                "docs": key[4], "concurrency": key[6], "target": shim["target"],
                "shim_pairs_s": shim["pairs_s"], "vllm_pairs_s": raw["pairs_s"],
                "shim_over_vllm": round(shim["pairs_s"] / raw["pairs_s"], 3),
                "shim_minus_vllm_p50_ms": _diff(shim["p50_ms"], raw["p50_ms"]),
                "shim_minus_vllm_p99_ms": _diff(shim["p99_ms"], raw["p99_ms"]),
                "gpu_busy_pct": {"shim": shim.get("gpu_busy_pct"), "vllm": raw.get("gpu_busy_pct")},
                "errors": {"shim": shim["errors"], "vllm": raw["errors"]}})


def phase_vl(clock: h.Clock, args: argparse.Namespace) -> None:
    targets = [t for t in args.targets.split(",") if t]
    for target in targets:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    concurrencies = [int(c) for c in args.concurrency.split(",") if c]
    model_dir = Path(args.model_dir) if args.model_dir else h.WORK / "models" / f"qwen3-vl-reranker-{args.shape[3:]}"
    # this phase's model, for the harness's launcher and result lines (one phase per process)
    h.MODEL_DIR = model_dir
    h.NAME = model_dir.name
    flags = shlex.split(args.flags)
    vllm_template = Path(args.vllm_template).resolve() if args.vllm_template else None
    if vllm_template is not None:  # vLLM takes the last --chat-template it is given
        flags += (["--chat-template", str(vllm_template)] if "--" in flags
                  else ["--", "--chat-template", str(vllm_template)])
    config = args.shape + ("+vllm-template" if vllm_template else "") + (f"+{args.config}" if args.config else "")
    # the whole plan is known first, so a call that cannot start the engine still says what is left
    done = {} if args.fresh else {step_key(r): r for r in earlier_results()}
    attempts: dict[tuple, int] = {}
    for rec in earlier_results():
        attempts[step_key(rec)] = attempts.get(step_key(rec), 0) + 1
    plan = []
    for c in concurrencies:
        for target in targets:
            key = (args.shape, config, args.image_size, args.image_format, args.docs, target, c)
            if key in done and done[key].get("ok"):
                h.log(f"{config}: {target} c={c} measured earlier on this machine")
                continue
            plan.append((target, c, attempts.get(key, 0)))
    if not plan and not args.fresh:
        h.log("every step measured earlier on this machine (--fresh measures them again)")
        compare()
        return
    if not build_model(clock, args.shape, model_dir):
        return
    if not start(clock, config, flags):
        return
    template_check(vllm_template)
    if not args.no_score_check:
        score_check(clock, args, config)
    for target, c, attempt in plan:
        load_step(clock, args, config, target, c, attempt)
    compare()
    finished = {step_key(r) for r in earlier_results() if r.get("ok")}
    if all((args.shape, config, args.image_size, args.image_format, args.docs, t, c) in finished
           for t, c, _ in plan):
        h.stop_launcher()  # all done: the GPU is free for the next phase


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=sorted(BUILD_S), default="vl-2b",
                        help="demo model shape (launcher/demo_model.py): Qwen3-VL-Reranker-2B/-8B's, "
                             "or the tiny one for a CPU dry run")
    parser.add_argument("--model-dir", default="", help="the model's directory (default "
                        "$BENCH_WORK/models/qwen3-vl-reranker-2b for vl-2b, built when absent)")
    parser.add_argument("--concurrency", default="8,32", help="requests in flight, e.g. 8,32")
    parser.add_argument("--docs", type=int, default=8, help="documents (pictures) per request")
    parser.add_argument("--image-size", type=int, default=1024, help="pictures are N x N pixels")
    parser.add_argument("--image-format", choices=("jpeg", "png"), default="jpeg",
                        help="how the pictures are encoded (PNG of a noisy picture is ~10x larger: "
                             "mind the shim's 16 MiB max_body_bytes)")
    parser.add_argument("--targets", default="shim,vllm", help=f"of {','.join(TARGETS)}")
    parser.add_argument("--seconds", type=float, default=20, help="measured span of each step")
    parser.add_argument("--max-pairs-s", type=float, default=150,
                        help="the most pairs/s expected: how many requests (pictures) a step prepares")
    parser.add_argument("--gen-s-per-image", type=float, default=0.05,
                        help="CPU seconds to make one picture (for each step's time estimate)")
    parser.add_argument("--seed", type=int, default=0, help="another seed, other pictures")
    parser.add_argument("--flags", default="", help="launcher flags (write --flags=--x for one flag)")
    parser.add_argument("--config", default="", help="a name for --flags in the result lines")
    parser.add_argument("--vllm-template", default="",
                        help="a copy of vLLM's examples/pooling/score/template/qwen3_vl_reranker.jinja: "
                             "checked against ours and given to the engine (--chat-template)")
    parser.add_argument("--no-score-check", action="store_true", help="skip the score comparison")
    parser.add_argument("--fresh", action="store_true", help="measure steps done earlier again")


def run(clock: h.Clock, args: argparse.Namespace) -> None:
    phase_vl(clock, args)
