"""Images for Qwen3-VL-Reranker as Qwen's reference code gives them to the model.

server/images loads and checks what a client sends (data: URLs, base64, guarded http(s) fetch,
size limits, the whole file decoded) into a `LoadedImage`; `ImagePreparer.prepare` then makes
sure vLLM gets the picture the reference feeds its processor (its `qwen_vl_utils` step): RGB
(transparency over white), resized so both sides are multiples of 32 and the area lies in
[MIN_PIXELS, MAX_PIXELS], bicubic. vLLM's processor keeps that size (launcher/vllm_args.py
VL_MM_PROCESSOR_KWARGS), so the token count is known here before vLLM sees the image:
(height / 32) x (width / 32) image tokens plus <|vision_start|> and <|vision_end|>.

What is sent, as a data: URL:
- the client's own bytes, when vLLM's image loader (vllm/multimodal/media/image.py: Pillow,
  EXIF orientation applied, RGBA over white, other modes converted to RGB) makes the
  reference's picture of them unchanged: a still JPEG, PNG or WebP in RGB, L or RGBA (no other
  transparency), no EXIF rotation, already of the reference's size, which vLLM's Pillow opens
  as the same format. Nothing is encoded: the common case costs its decode (and hash) only;
- otherwise the reference's picture, re-encoded as an uncompressed BMP: lossless, which vLLM
  reads, and about a hundred times cheaper to write than a compressed PNG (docs/vl.md, "What an
  image costs the shim"), for a larger body on the local connection to vLLM.
"""

from __future__ import annotations

import base64
import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from server.images import InvalidImage, LoadedImage
from server.scoring.vl_prompt import IMAGE_TOKEN_PIXELS, IMAGE_WRAPPER_TOKENS

# Qwen's reference reranker: 4 to 1,800 image tokens per image.
MIN_PIXELS = 4 * IMAGE_TOKEN_PIXELS * IMAGE_TOKEN_PIXELS
MAX_PIXELS = 1800 * IMAGE_TOKEN_PIXELS * IMAGE_TOKEN_PIXELS
MAX_ASPECT_RATIO = 200  # the reference refuses more elongated images
# The prepared-image cache: at most this many pictures and this many bytes of data: URLs.
_PREPARED_CACHE = 256
_PREPARED_CACHE_BYTES = 128 * 1024 * 1024

# Formats and pixel modes sent as the client's bytes (when nothing else rules it out): for
# these, vLLM's loader and the reference make the same RGB picture (RGB and L converted,
# RGBA over white: vLLM's default rgba_background_color, which the launcher leaves alone).
FORWARDED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
FORWARDED_MODES = frozenset({"RGB", "L", "RGBA"})
# The formats vLLM's loader opens, in its order (vllm/multimodal/image.py ALLOWED_IMAGE_FORMATS,
# vLLM 0.32): Pillow takes the first whose check accepts the bytes, so client bytes are sent
# only when this order opens them as the format they were checked as here (a file crafted to
# be one format here and another there would otherwise be scored on other pixels than the
# ones its cache key hashes).
VLLM_OPEN_FORMATS = ("AVIF", "BLP", "BMP", "CUR", "DCX", "DDS", "DIB", "FITS", "FLI", "FTEX", "GBR",
                     "GIF", "ICNS", "ICO", "IM", "IMT", "IPTC", "JPEG", "JPEG2000", "MCIDAS", "MSP",
                     "PCD", "PCX", "PIXAR", "PNG", "PPM", "PSD", "QOI", "SGI", "SPIDER", "SUN", "TGA",
                     "TIFF", "WEBP", "XBM", "XPM", "XVTHUMB")
_EXIF_ORIENTATION = 0x0112
_ROTATING_ORIENTATIONS = range(2, 9)  # what Pillow's exif_transpose (which vLLM calls) acts on


@dataclass(frozen=True)
class PreparedImage:
    digest: str   # the picture's hash (LoadedImage.sha256): the score cache's key for it
    url: str      # data: URL of the picture vLLM is to see (the client's bytes, or a BMP)
    width: int
    height: int

    @property
    def tokens(self) -> int:
        return (self.width // IMAGE_TOKEN_PIXELS) * (self.height // IMAGE_TOKEN_PIXELS) + IMAGE_WRAPPER_TOKENS


def smart_resize(height: int, width: int, factor: int = IMAGE_TOKEN_PIXELS,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The size Qwen's image pipeline resizes to: sides rounded to multiples of `factor` (Python's
    round, half to even), then scaled down (floor) or up (ceil) by one factor to fit the area
    bounds, keeping the aspect ratio."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InvalidImage(f"image aspect ratio must be below {MAX_ASPECT_RATIO}, got "
                           f"{max(height, width) / min(height, width):.0f}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def to_rgb(picture):
    """RGB as the reference makes it: an RGBA picture over a white background, others converted."""
    from PIL import Image

    if picture.mode == "RGBA":
        background = Image.new("RGB", picture.size, (255, 255, 255))
        background.paste(picture, mask=picture.split()[3])
        return background
    return picture.convert("RGB")


def resized(picture):
    """The RGB picture at the reference's size (bicubic, Pillow's default for resize)."""
    from PIL import Image

    rgb = to_rgb(picture)
    height, width = smart_resize(rgb.height, rgb.width)
    if (width, height) == rgb.size:
        return rgb
    return rgb.resize((width, height), Image.Resampling.BICUBIC)


def forwardable(image: LoadedImage, picture) -> bool:
    """Whether vLLM's loader, given the client's bytes, makes the same RGB picture of them as
    the reference (see the module docstring), the size aside; `picture` is the decoded first
    frame of `image`."""
    from PIL import Image

    if image.format not in FORWARDED_FORMATS or picture.mode not in FORWARDED_MODES:
        return False
    if "transparency" in picture.info or getattr(picture, "n_frames", 1) != 1:
        return False  # vLLM puts a tRNS colour over white, the reference ignores it; animation
    try:
        if picture.getexif().get(_EXIF_ORIENTATION, 1) in _ROTATING_ORIENTATIONS:
            return False  # vLLM would rotate it, the reference does not
        with Image.open(io.BytesIO(image.data), formats=VLLM_OPEN_FORMATS) as there:
            return there.format == image.format
    except Exception:  # noqa: BLE001 - unreadable metadata or another opener's error: re-encode
        return False


def bmp_url(picture) -> str:
    """An RGB picture as an uncompressed BMP data: URL (lossless; cheap to write and to read)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="BMP")
    return "data:image/bmp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ImagePreparer:
    """prepare() with a small cache by content hash: the same image in many requests (a query
    image, a catalogue's pictures) is resized and encoded once. Thread-safe: prepare runs in
    worker threads."""

    def __init__(self, entries: int = _PREPARED_CACHE, max_bytes: int = _PREPARED_CACHE_BYTES) -> None:
        self._entries = entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._cache: OrderedDict[str, PreparedImage] = OrderedDict()
        self._lock = threading.Lock()

    def prepare(self, image: LoadedImage, where: str) -> PreparedImage:
        """Blocking (a resize or an encode costs milliseconds): call it from a worker thread."""
        with self._lock:
            hit = self._cache.get(image.sha256)
            if hit is not None:
                self._cache.move_to_end(image.sha256)
                return hit
        picture = image.to_pil()
        try:
            height, width = smart_resize(picture.height, picture.width)
        except InvalidImage as exc:
            raise InvalidImage(f"{where}: {exc.detail}") from None
        if (width, height) == picture.size and forwardable(image, picture):
            url = image.data_url()
        else:
            url = bmp_url(resized(picture))
        prepared = PreparedImage(image.sha256, url, width, height)
        with self._lock:
            if image.sha256 not in self._cache:
                self._cache[image.sha256] = prepared
                self._bytes += len(url)
            while self._cache and (len(self._cache) > self._entries or self._bytes > self._max_bytes):
                self._bytes -= len(self._cache.popitem(last=False)[1].url)
        return prepared
