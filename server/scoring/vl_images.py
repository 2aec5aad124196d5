"""Images for Qwen3-VL-Reranker as Qwen's reference code gives them to the model.

server/images loads and checks what a client sends (data: URLs, base64, guarded http(s) fetch,
size limits) into a `LoadedImage`; `ImagePreparer.prepare` then makes the picture the reference
feeds its processor (its `qwen_vl_utils` step): RGB (transparency over white), resized so both
sides are multiples of 32 and the area lies in [MIN_PIXELS, MAX_PIXELS], bicubic. It is sent to
vLLM as a lossless PNG `data:` URL, whose size vLLM's processor keeps (launcher/vllm_args.py
VL_MM_PROCESSOR_KWARGS), so its token count is known here before vLLM sees it:
(height / 32) x (width / 32) image tokens plus <|vision_start|> and <|vision_end|>.
"""

from __future__ import annotations

import base64
import io
import math
from collections import OrderedDict
from dataclasses import dataclass

from server.images import InvalidImage, LoadedImage
from server.scoring.vl_prompt import IMAGE_TOKEN_PIXELS, IMAGE_WRAPPER_TOKENS

# Qwen's reference reranker: 4 to 1,800 image tokens per image.
MIN_PIXELS = 4 * IMAGE_TOKEN_PIXELS * IMAGE_TOKEN_PIXELS
MAX_PIXELS = 1800 * IMAGE_TOKEN_PIXELS * IMAGE_TOKEN_PIXELS
MAX_ASPECT_RATIO = 200  # the reference refuses more elongated images
_PREPARED_CACHE = 256


@dataclass(frozen=True)
class PreparedImage:
    digest: str   # the picture's hash (LoadedImage.sha256): the score cache's key for it
    url: str      # data:image/png;base64,... of the resized picture
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


class ImagePreparer:
    """prepare() with a small cache by content hash: the same image in many requests (a query
    image, a catalogue's pictures) is decoded and resized once."""

    def __init__(self, entries: int = _PREPARED_CACHE) -> None:
        self._entries = entries
        self._cache: OrderedDict[str, PreparedImage] = OrderedDict()

    def prepare(self, image: LoadedImage, where: str) -> PreparedImage:
        """Blocking (resizing costs milliseconds): call it from a worker thread for many images."""
        hit = self._cache.get(image.sha256)
        if hit is not None:
            self._cache.move_to_end(image.sha256)
            return hit
        try:
            picture = resized(image.to_pil())
        except InvalidImage as exc:
            raise InvalidImage(f"{where}: {exc.detail}") from None
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        prepared = PreparedImage(image.sha256, url, picture.width, picture.height)
        self._cache[image.sha256] = prepared
        if len(self._cache) > self._entries:
            self._cache.popitem(last=False)
        return prepared
