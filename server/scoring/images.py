"""Images for Qwen3-VL-Reranker: from a client's reference to what vLLM is sent.

Two steps:
- `decode_image(ref)`: the client's image (a `data:` URL or bare base64) as checked bytes, their
  hash and the decoded picture. A stand-in for the full image-input module (fetching http(s)
  URLs with an allow-list, SSRF refusal, byte/pixel/time limits), which replaces it; until then
  http(s) URLs are refused.
- `prepare(image)`: the picture as Qwen's reference code gives it to the model (its
  `qwen_vl_utils` step): RGB (transparency over white), resized so both sides are multiples of 32
  and the area lies in [MIN_PIXELS, MAX_PIXELS], bicubic; sent to vLLM as a lossless PNG `data:`
  URL, whose size vLLM's processor keeps (launcher/vllm_args.py VL_MM_PROCESSOR_KWARGS). Its
  token count is known here, before vLLM sees it: (height / 32) x (width / 32) image tokens plus
  <|vision_start|> and <|vision_end|>.
Every refusal is a domain error (InvalidInput) with a sentence the client can act on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
from collections import OrderedDict
from dataclasses import dataclass

from server.scoring.errors import InvalidInput
from server.scoring.vl_prompt import IMAGE_TOKEN_PIXELS, IMAGE_WRAPPER_TOKENS

# Qwen's reference reranker: 4 to 1,800 image tokens per image.
MIN_PIXELS = 4 * IMAGE_TOKEN_PIXELS * IMAGE_TOKEN_PIXELS
MAX_PIXELS = 1800 * IMAGE_TOKEN_PIXELS * IMAGE_TOKEN_PIXELS
MAX_ASPECT_RATIO = 200  # the reference refuses more elongated images
# Stand-in limits until the image-input module's settings replace them.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_DECODED_PIXELS = 64_000_000
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_PREPARED_CACHE = 256


@dataclass(frozen=True)
class DecodedImage:
    data: bytes
    digest: str  # sha256 of the client's bytes: the score cache's key for the image
    picture: object  # PIL.Image.Image, loaded


@dataclass(frozen=True)
class PreparedImage:
    digest: str
    url: str      # data:image/png;base64,... of the resized picture
    width: int
    height: int

    @property
    def tokens(self) -> int:
        return (self.width // IMAGE_TOKEN_PIXELS) * (self.height // IMAGE_TOKEN_PIXELS) + IMAGE_WRAPPER_TOKENS


def decode_image(ref: str, where: str) -> DecodedImage:
    """A client's image reference, decoded and checked; `where` names it in errors."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInput(f"{where}: an image must be a data: URL or base64 text")
    text = ref.strip()
    if text.startswith(("http://", "https://")):
        raise InvalidInput(f"{where}: fetching image URLs is not enabled on this server; send the "
                           "image inline as a data: URL (data:image/png;base64,...) or base64")
    if text.startswith("data:"):
        header, comma, payload = text.partition(",")
        if not comma or ";base64" not in header:
            raise InvalidInput(f"{where}: a data: URL must be base64 (data:image/png;base64,...)")
        if not header[5:].startswith("image/"):
            raise InvalidInput(f"{where}: the data: URL is not an image ({header[5:].split(';')[0]!r})")
        text = payload
    if len(text) * 3 // 4 > MAX_IMAGE_BYTES:
        raise InvalidInput(f"{where}: image larger than {MAX_IMAGE_BYTES} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: not valid base64") from None
    return DecodedImage(data, hashlib.sha256(data).hexdigest(), _open(data, where))


def _open(data: bytes, where: str):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.format not in _FORMATS:
                raise InvalidInput(f"{where}: unsupported image format {probe.format}")
            width, height = probe.size
        if width * height > MAX_DECODED_PIXELS:
            raise InvalidInput(f"{where}: image of {width}x{height} pixels is larger than "
                               f"{MAX_DECODED_PIXELS} pixels")
        picture = Image.open(io.BytesIO(data))
        picture.load()
        return picture
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a damaged file
        raise InvalidInput(f"{where}: not a readable image ({type(exc).__name__})") from None


def smart_resize(height: int, width: int, factor: int = IMAGE_TOKEN_PIXELS,
                 min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The size Qwen's image pipeline resizes to: sides rounded to multiples of `factor` (Python's
    round, half to even), then scaled down (floor) or up (ceil) by one factor to fit the area
    bounds, keeping the aspect ratio."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InvalidInput(f"image aspect ratio must be below {MAX_ASPECT_RATIO}, got "
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


class ImagePreparer:
    """prepare() with a small cache by content hash: the same image in many requests (a query
    image, a catalogue's pictures) is decoded and resized once."""

    def __init__(self, entries: int = _PREPARED_CACHE) -> None:
        self._entries = entries
        self._cache: OrderedDict[str, PreparedImage] = OrderedDict()

    def prepare(self, image: DecodedImage, where: str) -> PreparedImage:
        hit = self._cache.get(image.digest)
        if hit is not None:
            self._cache.move_to_end(image.digest)
            return hit
        try:
            picture = resized(image.picture)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc.detail}") from None
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        prepared = PreparedImage(image.digest, url, picture.width, picture.height)
        self._cache[image.digest] = prepared
        if len(self._cache) > self._entries:
            self._cache.popitem(last=False)
        return prepared
