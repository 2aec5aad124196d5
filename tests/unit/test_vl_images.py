"""What the shim sends vLLM for an image is, after vLLM's own image loader, the reference's picture.

vLLM's loader (vllm.multimodal.media.ImageMediaIO, as the server uses it: RGB) opens the bytes
with Pillow, applies EXIF orientation, puts RGBA over white and a tRNS colour over white, and
converts other modes; Qwen's reference does none of the first two and ignores tRNS. So the shim
sends the client's own bytes only where both agree, and re-encodes the rest: here each case is
prepared, loaded by vLLM's real loader, and compared pixel for pixel with the reference's picture
(`resized`, the qwen_vl_utils step, whose parity with the model's reference is tested in
tests/integration/test_vl_parity.py)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from server.images import decode_image
from server.scoring.vl_images import VLLM_OPEN_FORMATS, ImagePreparer, resized
from server.settings import Settings

SETTINGS = Settings()


def picture(mode: str, size: tuple[int, int]) -> Image.Image:
    """A picture whose pixels differ everywhere (so a rotation or a lost channel shows)."""
    width, height = size
    rgba = Image.new("RGBA", size)
    rgba.putdata([((x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256, (x * 11 + y) % 256)
                  for y in range(height) for x in range(width)])
    return rgba if mode == "RGBA" else rgba.convert(mode)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return encoded(picture("RGB", (64, 96)), "JPEG", quality=90, exif=exif.tobytes())


def rgb_with_trns() -> bytes:
    return encoded(picture("RGB", (64, 64)), "PNG", transparency=(0, 0, 0))


def palette_with_transparency() -> bytes:
    return encoded(picture("RGB", (64, 64)).convert("P"), "PNG", transparency=0)


def animated_png() -> bytes:
    frames = [picture("RGB", (64, 64)), Image.new("RGB", (64, 64), (255, 0, 0))]
    return encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])


# name: (bytes, sent as the client's own bytes)
CASES = {
    "jpeg rgb": (lambda: encoded(picture("RGB", (64, 96)), "JPEG", quality=90), True),
    "jpeg grey": (lambda: encoded(picture("L", (96, 64)), "JPEG", quality=90), True),
    "png rgb": (lambda: encoded(picture("RGB", (128, 64)), "PNG"), True),
    "png grey": (lambda: encoded(picture("L", (64, 64)), "PNG"), True),
    "png rgba": (lambda: encoded(picture("RGBA", (64, 64)), "PNG"), True),
    "webp lossless rgba": (lambda: encoded(picture("RGBA", (64, 64)), "WEBP", lossless=True), True),
    "jpeg with exif rotation": (rotated_jpeg, False),
    "png rgb with a trns colour": (rgb_with_trns, False),
    "png palette with transparency": (palette_with_transparency, False),
    "png grey with alpha": (lambda: encoded(picture("LA", (64, 64)), "PNG"), False),
    "png 16-bit grey": (lambda: encoded(picture("L", (64, 64)).convert("I;16"), "PNG"), False),
    "jpeg cmyk": (lambda: encoded(picture("RGB", (64, 64)).convert("CMYK"), "JPEG", quality=90), False),
    "png animated": (animated_png, False),
    "gif": (lambda: encoded(picture("RGB", (64, 64)), "GIF"), False),
    "jpeg to resize": (lambda: encoded(picture("RGB", (100, 50)), "JPEG", quality=90), False),
    "png rgba to resize": (lambda: encoded(picture("RGBA", (30, 30)), "PNG"), False),
}


@pytest.fixture(scope="module")
def vllm_loader():
    from vllm.multimodal.media import ImageMediaIO

    return ImageMediaIO(image_mode="RGB")


@pytest.mark.parametrize("name", sorted(CASES))
def test_vllm_loads_the_reference_picture_from_what_is_sent(name, vllm_loader):
    make, forwarded = CASES[name]
    data = make()
    loaded = decode_image(data, SETTINGS, keep_picture=True)
    prepared = ImagePreparer().prepare(loaded, "image")
    header, payload = prepared.url.split(",", 1)
    sent = base64.b64decode(payload)
    assert (sent == data) is forwarded, name
    assert header == (f"data:{loaded.mime};base64" if forwarded else "data:image/bmp;base64")
    media_type = header[len("data:"):].split(";")[0]
    there = vllm_loader.load_base64(media_type, payload).media
    reference = resized(Image.open(io.BytesIO(data)))  # no EXIF rotation: the reference has none
    assert there.mode == "RGB" and there.size == reference.size == (prepared.width, prepared.height)
    assert there.tobytes() == reference.tobytes(), name


def test_the_opener_order_is_vllms():
    """Client bytes are sent only when vLLM's opener order opens them as the same format: that
    order must be the installed vLLM's."""
    from vllm.multimodal.image import ALLOWED_IMAGE_FORMATS

    assert tuple(ALLOWED_IMAGE_FORMATS) == VLLM_OPEN_FORMATS


def test_the_same_picture_in_another_file_has_the_same_cache_key():
    image = picture("RGB", (64, 64))
    png, webp = (decode_image(encoded(image, fmt, lossless=True), SETTINGS) for fmt in ("PNG", "WEBP"))
    assert png.sha256 == webp.sha256
    rotated = decode_image(rotated_jpeg(), SETTINGS)
    plain = decode_image(encoded(Image.open(io.BytesIO(rotated_jpeg())), "PNG"), SETTINGS)
    assert rotated.sha256 == plain.sha256  # the tag is not the picture: the reference ignores it
