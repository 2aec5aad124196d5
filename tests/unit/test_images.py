"""Image input (server/images/): data: URLs and base64 in, checked images or 4xx domain errors out.

Every image here is made by Pillow (real PNG, JPEG, WebP and GIF bytes); the hostile ones are
real files too: cut short, of the wrong type, or a small file declaring a huge canvas. Fetching
http(s) URLs is tested against a real local HTTP server in test_image_fetch.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib

import pytest
from PIL import Image
from pydantic import ValidationError

from server.errors import http_error
from server.images import (
    ImageRefused,
    ImageTooLarge,
    InvalidImage,
    decode_image,
    decoded_bytes,
    load_image,
    load_images,
)
from server.ops.admission import Admission
from server.ops.metrics import Metrics
from server.scoring.errors import InvalidInput, NoRoom, TooLarge
from server.settings import Settings

DEFAULTS = Settings()


def picture(width: int = 48, height: int = 32, seed: int = 0) -> Image.Image:
    """A picture with detail in every row (noise), so a file cut short loses real pixels."""
    raw = bytes((x * 7 + y * 13 + seed * 31 + (x * y) % 17) % 256 for y in range(height)
                for x in range(width) for _ in range(3))
    return Image.frombytes("RGB", (width, height), raw)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def load(source: str, settings: Settings = DEFAULTS):
    return asyncio.run(load_image(source, settings))


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose header declares width x height (8-bit gray) followed by the IDAT given."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --- what is accepted ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, options, mime", [
    ("PNG", {}, "image/png"),
    ("JPEG", {"quality": 90}, "image/jpeg"),
    ("WEBP", {"quality": 80}, "image/webp"),
    ("GIF", {}, "image/gif"),
])
def test_each_accepted_format_loads_from_a_data_url_and_from_bare_base64(fmt, options, mime):
    data = encode(picture(), fmt, **options)
    from_url = load(f"data:{mime};base64,{b64(data)}")
    from_b64 = load(b64(data))
    for image in (from_url, from_b64):
        assert (image.format, image.mime, image.width, image.height) == (fmt, mime, 48, 32)
        assert image.data == data, "the bytes sent are the bytes kept (and sent on to the engine)"
        assert image.decoded_bytes == 48 * 32 * 3
        assert image.to_pil().size == (48, 32)
    assert (from_url.source, from_b64.source) == ("data", "base64")
    assert from_url.sha256 == from_b64.sha256
    assert load(from_url.data_url()).sha256 == from_url.sha256, "data_url() round-trips"


def test_base64_with_line_breaks_url_safe_alphabet_or_no_padding_loads_the_same_picture():
    data = encode(picture(), "PNG")
    text = b64(data)
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    urlsafe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    digests = {load(t).sha256 for t in (text, wrapped, urlsafe, f"data:image/png;base64,{wrapped}")}
    assert len(digests) == 1


def test_a_data_url_without_base64_is_percent_decoded():
    data = encode(picture(8, 8), "PNG")
    from urllib.parse import quote_from_bytes
    assert load("data:image/png," + quote_from_bytes(data)).sha256 == load(b64(data)).sha256


def test_the_hash_is_of_the_pixels_one_picture_in_two_lossless_encodings_shares_it():
    image = picture()
    png, webp = encode(image, "PNG"), encode(image, "WEBP", lossless=True)
    assert png != webp
    assert load(b64(png)).sha256 == load(b64(webp)).sha256, "same picture, same cache key"
    other = picture(seed=1)
    assert load(b64(encode(other, "PNG"))).sha256 != load(b64(png)).sha256
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert load(b64(encode(flipped, "PNG"))).sha256 != load(b64(png)).sha256


def test_palette_images_with_the_same_indices_and_different_palettes_hash_differently():
    indices = Image.frombytes("P", (16, 16), bytes(range(256)))
    red, blue = indices.copy(), indices.copy()
    red.putpalette([v for i in range(256) for v in (i, 0, 0)])
    blue.putpalette([v for i in range(256) for v in (0, 0, i)])
    assert load(b64(encode(red, "GIF"))).sha256 != load(b64(encode(blue, "GIF"))).sha256


def test_an_animated_gif_is_read_as_its_first_frame():
    first, second = picture(16, 16, seed=2), picture(16, 16, seed=3)
    out = io.BytesIO()
    first.save(out, "GIF", save_all=True, append_images=[second], duration=100)
    animated = load(b64(out.getvalue()))
    assert animated.sha256 == load(b64(encode(first, "GIF"))).sha256


# --- what is refused -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_file_cut_short_is_refused_as_truncated(fmt):
    data = encode(picture(96, 96), fmt)
    cut = data[: len(data) // 2]
    with pytest.raises(InvalidImage, match="truncated or corrupt|not of an accepted format"):
        load(b64(cut))


def gradient_png(width: int, height: int) -> bytes:
    """A smooth picture as tests/integration/test_vl.py draws them: it compresses to a tiny PNG."""
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7 + 62) % 256, (y * 5 + 34) % 256, ((x + y) * 3 + 2) % 256)
                   for y in range(height) for x in range(width)])
    return encode(image, "PNG")


def test_the_first_200_bytes_of_a_png_are_refused_unless_they_are_the_whole_file():
    # the integration test's "truncated" image was such a PNG cut at 200 bytes: the whole file
    small = gradient_png(128, 64)
    assert len(small) < 200, "this smooth picture deflates to less than 200 bytes"
    assert load(b64(small[:200])).sha256 == load(b64(small)).sha256
    larger = encode(picture(128, 64), "PNG")
    assert len(larger) > 200
    with pytest.raises(InvalidImage, match="PNG image is truncated or corrupt"):
        load("data:image/png;base64," + b64(larger[:200]))


def animated_gif() -> bytes:
    out = io.BytesIO()
    picture(16, 16, seed=2).save(out, "GIF", save_all=True, append_images=[picture(16, 16, seed=3)],
                                 duration=100)
    return out.getvalue()


@pytest.mark.parametrize("kind, data", [
    ("PNG", encode(picture(32, 16), "PNG")),
    ("PNG", gradient_png(128, 64)),  # its pixels inflate completely from the first 178 bytes
    ("PNG", encode(picture(32, 16).convert("RGBA"), "PNG", save_all=True,  # APNG, two frames
                   append_images=[picture(32, 16, seed=1).convert("RGBA")])),
    ("GIF", encode(picture(32, 16), "GIF")),
    ("GIF", animated_gif()),  # cut in its second frame: the first one still decodes
    ("JPEG", encode(picture(32, 16), "JPEG")),
    ("WEBP", encode(picture(32, 16), "WEBP")),
])
def test_a_file_cut_anywhere_is_refused_even_where_its_first_frame_still_decodes(kind, data):
    assert load(b64(data)).format == kind
    assert load(b64(data + b"\0\0 trailing bytes")).format == kind, "bytes after the end are ignored"
    # Pillow alone loads a PNG missing its last 21 bytes (zlib checksum, CRC, IEND) and a GIF
    # missing its trailer or later frames: every cut of the last 40 bytes, and a few earlier
    cuts = sorted({*range(max(1, len(data) - 40), len(data)), len(data) // 2, len(data) * 3 // 4})
    for n in cuts:
        with pytest.raises(InvalidImage):
            load(b64(data[:n]))


def test_a_png_with_a_broken_pixel_stream_is_refused():
    data = bytearray(encode(picture(), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 10:start + 40] = bytes(30)  # the zlib stream garbled (CRC no longer matches)
    with pytest.raises(InvalidImage):
        load(b64(bytes(data)))


@pytest.mark.parametrize("content, expected", [
    (b"just some text, no image at all", "not of an accepted format"),
    (b"<!DOCTYPE html><html><body><img src=x></body></html>", "HTML page"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="10" height="10"/></svg>', "SVG"),
])
def test_text_html_and_svg_are_refused_with_what_they_are(content, expected):
    with pytest.raises(InvalidImage, match=expected):
        load(b64(content))
    with pytest.raises(InvalidImage, match=expected):
        load(f"data:image/png;base64,{b64(content)}")


@pytest.mark.parametrize("url, expected", [
    ("data:image/svg+xml;base64,PHN2Zy8+", "SVG"),
    ("data:text/html;base64,PGh0bWw+", "not an image type"),
    ("data:image/png;base64", "no comma"),
    ("data:image/png;base64,", "empty"),
    ("data:image/png;base64,@@@notbase64@@@", "not valid base64"),
])
def test_malformed_or_non_image_data_urls_are_refused(url, expected):
    with pytest.raises(InvalidImage, match=expected):
        load(url)


def test_a_format_outside_image_formats_is_refused_though_pillow_could_read_it():
    tiff, bmp = encode(picture(), "TIFF"), encode(picture(), "BMP")
    with pytest.raises(InvalidImage, match="accepted format"):
        load(b64(tiff))
    with pytest.raises(InvalidImage, match="accepted format"):
        load(b64(bmp))
    assert load(b64(bmp), Settings(image_formats="PNG,BMP")).format == "BMP"
    with pytest.raises(InvalidImage):  # PNG not listed: refused
        load(b64(encode(picture(), "PNG")), Settings(image_formats="JPEG"))


@pytest.mark.parametrize("source", ["", "   ", "\n"])
def test_an_empty_image_is_refused(source):
    with pytest.raises(InvalidImage, match="empty"):
        load(source)


def test_a_small_file_declaring_a_huge_canvas_is_refused_from_its_header_before_decoding():
    # 5000 x 5000 (25 Mpx: above image_max_pixels, below Pillow's own guard) in a file of a few
    # hundred bytes whose pixel stream is far too short: decoding it would fail as truncated, so
    # "too large" proves the refusal came from the header, before any pixel was decoded.
    packer = zlib.compressobj()
    bomb = png_declaring(5000, 5000, packer.compress(bytes(5001 * 4)) + packer.flush(zlib.Z_SYNC_FLUSH))
    assert len(bomb) < 200
    with pytest.raises(ImageTooLarge, match="5000x5000 = 25000000 pixels, more than image_max_pixels"):
        load(b64(bomb))
    # the same header with image_max_pixels above it: now the decoder runs and finds it cut short
    with pytest.raises(InvalidImage, match="truncated"):
        load(b64(bomb), Settings(image_max_pixels=25_000_000))


def test_a_real_decompression_bomb_is_refused_without_being_decoded():
    # a complete, valid 6000 x 6000 gray PNG (36 Mpx: 108 MB as RGB) in about 35 KB
    row = b"\x00" + bytes(6000)
    idat = zlib.compress(row * 6000)
    bomb = png_declaring(6000, 6000, idat)
    assert len(bomb) < 64 * 1024
    assert Image.open(io.BytesIO(bomb)).size == (6000, 6000), "a real PNG"
    with pytest.raises(ImageTooLarge, match="6000x6000 = 36000000 pixels"):
        load(b64(bomb))


def test_a_canvas_past_pillows_own_guard_is_refused_as_too_large_whatever_image_max_pixels_says():
    # 20000 x 20000 is past Pillow's decompression-bomb error (2 x Image.MAX_IMAGE_PIXELS), which
    # fires while the header is read: still a 413, not a 422 or a 500
    with pytest.raises(ImageTooLarge, match="image_max_pixels"):
        load(b64(png_declaring(20000, 20000, zlib.compress(b"\x00" * 20001))), Settings(image_max_pixels=10**12))


def test_image_max_pixels_bounds_ordinary_images():
    data = b64(encode(picture(64, 64), "PNG"))
    assert load(data, Settings(image_max_pixels=64 * 64)).width == 64
    with pytest.raises(ImageTooLarge, match="64x64 = 4096 pixels"):
        load(data, Settings(image_max_pixels=64 * 64 - 1))


def test_more_encoded_bytes_than_image_max_bytes_is_refused_in_every_form():
    data = encode(picture(64, 64), "PNG")
    tight = Settings(image_max_bytes=len(data) - 1)
    for source in (b64(data), f"data:image/png;base64,{b64(data)}"):
        with pytest.raises(ImageTooLarge, match="image_max_bytes"):
            load(source, tight)
    with pytest.raises(ImageTooLarge):
        decode_image(data, tight)
    assert load(b64(data), Settings(image_max_bytes=len(data))).width == 64


def test_base64_far_over_the_limit_is_refused_from_its_length_without_decoding():
    huge = "A" * (40 * 1024 * 1024)  # 30 MB once decoded; also not an image at all
    with pytest.raises(ImageTooLarge, match="more than image_max_bytes"):
        load(huge)


@pytest.mark.parametrize("source", ["file:///etc/passwd", "ftp://example.com/a.png",
                                    "gopher://127.0.0.1:70/_x", "javascript:alert(1)",
                                    "FILE:///etc/shadow", " dict://localhost:11211/"])
def test_schemes_other_than_data_http_https_are_refused(source):
    with pytest.raises(ImageRefused, match="scheme .* is not accepted"):
        load(source)


def test_http_urls_are_refused_while_image_fetch_is_off_the_default():
    assert DEFAULTS.image_fetch is False
    with pytest.raises(ImageRefused, match="image_fetch is off"):
        load("https://example.com/cat.png")


# --- one request's images together -------------------------------------------------------------

def test_a_requests_images_together_are_bounded_by_image_max_request_bytes():
    sources = [b64(encode(picture(100, 100, seed=i), "PNG")) for i in range(3)]  # 30000 bytes each
    settings = Settings(image_max_request_bytes=70_000)
    loaded = asyncio.run(load_images(sources[:2] + sources[:2], settings))
    assert [i.sha256 for i in loaded[2:]] == [i.sha256 for i in loaded[:2]], "in order, repeats reused"
    assert decoded_bytes(loaded) == 60_000, "a picture counted once however often it is sent"
    with pytest.raises(ImageTooLarge, match="image_max_request_bytes"):
        asyncio.run(load_images(sources, settings))


def test_the_first_bad_image_of_a_request_is_what_the_request_gets():
    good = b64(encode(picture(), "PNG"))
    with pytest.raises(InvalidImage, match="not valid base64"):
        asyncio.run(load_images([good, "not base64 at all!", good], DEFAULTS))


# --- the edge and admission --------------------------------------------------------------------

@pytest.mark.parametrize("error, status, type_", [
    (InvalidImage("x"), 422, "invalid_image"),
    (ImageTooLarge("x"), 413, "image_too_large"),
    (ImageRefused("x"), 400, "image_refused"),
])
def test_each_image_refusal_is_a_4xx_with_its_own_type(error, status, type_):
    mapped = http_error(error)
    assert (mapped.status, mapped.type, mapped.detail) == (status, type_, "x")


def test_image_errors_are_also_the_general_errors_code_may_catch():
    assert isinstance(InvalidImage("x"), InvalidInput) and isinstance(ImageTooLarge("x"), TooLarge)


def test_admission_counts_decoded_image_bytes_in_flight():
    async def scenario():
        admission = Admission(100, 0, 1, Metrics(), max_image_bytes=1000)
        async with admission.admit(1, 10, image_bytes=5000):  # alone: admitted though over the bound
            with pytest.raises(NoRoom, match="decoded image bytes") as refused:
                async with admission.admit(1, 10, image_bytes=1):
                    pass
            assert refused.value.reason == "image_bytes"
        async with admission.admit(1, 10, image_bytes=600):
            async with admission.admit(1, 10, image_bytes=400):
                assert admission.image_bytes == 1000
        assert admission.image_bytes == 0
    asyncio.run(scenario())


def test_the_image_byte_bound_is_per_engine_and_split_over_workers():
    s = Settings(max_inflight_image_bytes=1000, workers=4, vllm_url="http://a,http://b")
    assert s.per_worker().max_inflight_image_bytes == 500


# --- settings ----------------------------------------------------------------------------------

def test_settings_defaults_are_safe():
    s = Settings()
    assert (s.image_fetch, s.image_fetch_hosts, s.image_fetch_private_networks) == (False, [], [])
    assert s.image_formats == ["PNG", "JPEG", "WEBP", "GIF"]


def test_settings_come_from_the_environment_like_every_other(monkeypatch):
    monkeypatch.setenv("RERANKER_IMAGE_FETCH", "true")
    monkeypatch.setenv("RERANKER_IMAGE_FETCH_HOSTS", "img.example.com, *.cdn.example.com")
    monkeypatch.setenv("RERANKER_IMAGE_FETCH_PRIVATE_NETWORKS", '["10.1.2.0/24"]')
    s = Settings()
    assert s.image_fetch_hosts == ["img.example.com", "*.cdn.example.com"]
    assert s.image_fetch_private_networks == ["10.1.2.0/24"]
    assert Settings(**{k: v for k, v in s.model_dump().items() if k.startswith("image")}).image_fetch
    assert s.to_env()["RERANKER_IMAGE_FETCH_HOSTS"] == '["img.example.com", "*.cdn.example.com"]'


@pytest.mark.parametrize("settings, expected", [
    ({"image_fetch": True}, "image_fetch needs image_fetch_hosts"),
    ({"image_fetch_hosts": "http://img.example.com"}, "not a host pattern"),
    ({"image_fetch_hosts": "img.*.com"}, "not a host pattern"),
    ({"image_fetch_private_networks": "10.0.0.0/33"}, "not an IP network"),
    ({"image_formats": "PNG,SVG"}, "unknown image formats"),
    ({"image_max_pixels": 0}, "greater than or equal to 1"),
])
def test_settings_mistakes_are_refused_at_start(settings, expected):
    with pytest.raises(ValidationError, match=expected):
        Settings(**settings)


def test_fetching_on_without_hosts_stops_the_launcher_with_one_line(capsys):
    from launcher.cli import parse
    with pytest.raises(SystemExit) as stopped:
        parse(["--image-fetch"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "reranker: image_fetch needs image_fetch_hosts: the hosts image URLs may name (or * for any "
        "host with public addresses)"]
    assert parse(["--image-fetch", "--image-fetch-hosts", "a.example.com,*.b.example.com"]).image_fetch_hosts == [
        "a.example.com", "*.b.example.com"]


def test_where_names_the_image_in_every_refusal_and_keeps_its_kind():
    bad = b64(b"<html></html>")
    with pytest.raises(InvalidImage, match=r"^documents\[2\]\.image: the image is an HTML page"):
        asyncio.run(load_image(bad, DEFAULTS, where="documents[2].image"))
    with pytest.raises(ImageRefused, match=r"^query: image URLs are not fetched"):
        asyncio.run(load_image("http://example.com/a.png", DEFAULTS, where="query"))
    good = b64(encode(picture(), "PNG"))
    with pytest.raises(InvalidImage, match=r"^documents\[1\]: "):
        asyncio.run(load_images([good, bad, bad], DEFAULTS, where=["documents[0]", "documents[1]", "documents[2]"]))


def test_keep_picture_returns_the_decoded_first_frame_without_decoding_again():
    data = b64(encode(picture(), "PNG"))
    kept = asyncio.run(load_image(data, DEFAULTS, keep_picture=True))
    assert kept.picture is not None and kept.to_pil() is kept.picture
    assert kept.picture.tobytes() == picture().tobytes()
    assert load(data).picture is None, "by default only the encoded bytes are kept"


def test_a_route_that_reads_images_documents_their_refusals_and_a_text_route_does_not():
    import dataclasses

    from server.dialects import DIALECTS
    from server.openapi import IMAGE_SCORING_ROUTE, error_responses, scoring_answers

    text_dialect = next(d for d in DIALECTS if d.name == "legacy")
    path = text_dialect.paths[0]
    image_dialect = dataclasses.replace(text_dialect, answers={path: IMAGE_SCORING_ROUTE})

    def documented(dialect, settings):
        responses = error_responses(dialect, path, scoring_answers(settings, False, None))
        return {status: entry["description"] for status, entry in responses.items()}

    text = documented(text_dialect, DEFAULTS)
    assert not any("image" in description for description in text.values())
    images = documented(image_dialect, DEFAULTS)
    assert "`type`: image_refused" in images[400] and "image_fetch is off" in images[400]
    assert "`type`: image_too_large" in images[413] and "image_max_pixels (16777216)" in images[413]
    assert "`type`: invalid_image" in images[422]
    assert "image_fetch_failed" not in "".join(images.values()), "nothing is fetched by default"
    fetching = documented(image_dialect, Settings(image_fetch=True, image_fetch_hosts=["*"]))
    assert "`type`: image_fetch_failed" in fetching[422]
    assert "outside image_fetch_hosts" in fetching[400]
