"""What the shim's CPU spends on one image for Qwen3-VL-Reranker, before vLLM sees it.

    python -m benchmarks.vl_image_prep [--repeat 15]

Per picture (photo-like, made here: gradients, blurred noise), in this process, one thread:
- decode: `decode_image` (header checks, the full decode, the truncation check, the pixel hash
  that keys the score cache);
- prepare: `ImagePreparer.prepare` on a fresh preparer (no cache hit): the picture vLLM is sent
  (the client's bytes, or the reference's resized picture re-encoded) as a data: URL;
- the median over --repeat runs of each, in milliseconds, and the size of the URL sent.
Prints one JSON line per picture. Figures: docs/vl.md, "What an image costs the shim".
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

from PIL import Image, ImageFilter

from server.images import decode_image
from server.scoring.vl_images import ImagePreparer
from server.settings import Settings


def photo(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A photo-like picture: smooth gradients under blurred noise (compresses like a photo:
    about 0.3 MB as a 1024x1024 JPEG at quality 90)."""
    noise = [Image.effect_noise((width, height), 48).filter(ImageFilter.GaussianBlur(0.8)) for _ in range(3)]
    gradient = Image.linear_gradient("L").resize((width, height))
    bands = [Image.blend(n, g, 0.5) for n, g in zip(noise, (gradient, gradient.rotate(90), gradient.rotate(45)))]
    picture = Image.merge("RGB", bands)
    if mode == "RGBA":
        picture.putalpha(gradient)
    return picture


def encoded(picture: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    settings = Settings()
    cases = {
        "jpeg q90 1024x1024": encoded(photo(1024, 1024), "JPEG", quality=90),
        "png 1024x1024": encoded(photo(1024, 1024), "PNG"),
        "png rgba 1024x1024": encoded(photo(1024, 1024, "RGBA"), "PNG"),
        "jpeg q90 1000x750 (resized)": encoded(photo(1000, 750), "JPEG", quality=90),
        "jpeg q90 4032x3024 (resized)": encoded(photo(4032, 3024), "JPEG", quality=90),
    }
    for name, data in cases.items():
        decode = median_ms(lambda data=data: decode_image(data, settings, keep_picture=True), args.repeat)
        loaded = decode_image(data, settings, keep_picture=True)
        prepare = median_ms(lambda loaded=loaded: ImagePreparer().prepare(loaded, "image"), args.repeat)
        prepared = ImagePreparer().prepare(loaded, "image")
        print(json.dumps({"picture": name, "bytes": len(data), "decode_ms": round(decode, 1),
                          "prepare_ms": round(prepare, 1), "total_ms": round(decode + prepare, 1),
                          "sent": prepared.url[5:prepared.url.index(";")],
                          "sent_url_bytes": len(prepared.url)}), flush=True)


if __name__ == "__main__":
    main()
