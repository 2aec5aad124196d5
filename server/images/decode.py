"""Bytes and strings to a checked image: base64 and data: URLs in, `LoadedImage` out.

Decoding runs in a worker thread (`load_image` calls `decode_image` through asyncio.to_thread):
a large image takes tens of milliseconds of CPU, which the event loop must not wait for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import urllib.parse
import zlib
from dataclasses import dataclass, field
from io import BytesIO

from PIL import Image

from server.images.errors import ImageTooLarge, InvalidImage
from server.settings import ImageSettings

MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
              "BMP": "image/bmp"}
# Pixel modes hashed as they are; any other (palette, CMYK, 16-bit, 1-bit, ...) is hashed as its
# RGBA conversion, so a palette image's key covers its palette and transparency too.
_HASHED_AS_IS = frozenset({"RGB", "RGBA", "L", "LA"})
# The CRC that ends every PNG: IEND's, over its type and an empty body.
_IEND_CRC = zlib.crc32(b"IEND").to_bytes(4, "big")
# Bytes per pixel counted for admission: the RGB pixels a model's image processor starts from.
DECODED_BYTES_PER_PIXEL = 3


@dataclass(frozen=True)
class LoadedImage:
    """One checked image.

    data: the encoded bytes as sent or fetched (already decoded once here: a valid image of an
    allowed format, first frame complete, within the limits). format: Pillow's name (PNG, JPEG,
    WEBP, GIF, BMP); mime: its media type. width, height: pixels. sha256: hex digest of the
    decoded pixels (mode, size and pixel bytes of the first frame), the same for the same picture
    in any encoding: the score cache's key. decoded_bytes: width x height x 3, what admission
    control and the per-request limit count. source: "data" (a data: URL), "base64" (bare
    base64), "url" (fetched; `url` is the address the bytes came from after redirects).
    No EXIF orientation is applied (Qwen's reference does not apply it; vLLM's loader does, so
    server/scoring/vl_images.py sends vLLM such a picture re-encoded, without the tag).
    """

    data: bytes = field(repr=False)
    format: str
    mime: str
    width: int
    height: int
    sha256: str
    decoded_bytes: int
    source: str
    url: str = ""
    # the decoded first frame, when asked for (decode_image(keep_picture=True)): a caller that
    # resizes or converts it saves decoding it again; it costs its pixels' memory while kept
    picture: Image.Image | None = field(default=None, repr=False, compare=False)

    def data_url(self) -> str:
        """The image as a base64 data: URL (what vLLM's chat-style inputs take)."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    def to_pil(self) -> Image.Image:
        """The decoded first frame as a Pillow image: the kept `picture`, else decoded again (by
        default a LoadedImage keeps only the encoded bytes, so images waiting for the engine cost
        their file size, not their pixels)."""
        if self.picture is not None:
            return self.picture
        image = Image.open(BytesIO(self.data), formats=[self.format])
        image.load()
        return image


class DecodedBudget:
    """Decoded bytes the images of one request may still take (`image_max_request_bytes`).
    Charged from each image's header, before its pixels are decoded; thread-safe, since decoding
    runs in worker threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, amount: int) -> None:
        with self._lock:
            if self.used + amount > self.limit:
                raise ImageTooLarge(
                    f"the request's images decode to more than image_max_request_bytes "
                    f"({self.limit} bytes at {DECODED_BYTES_PER_PIXEL} bytes a pixel): send fewer "
                    "or smaller images")
            self.used += amount


def decode_base64(text: str, settings: ImageSettings, what: str = "image") -> bytes:
    """Bare base64 (standard or URL-safe alphabet, padding optional, whitespace ignored) to
    bytes; the size limit is checked on the text's length, before decoding."""
    compact = "".join(text.split())
    _check_encoded_size(len(compact.rstrip("=")) * 3 // 4, settings)
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{what} is not valid base64 (nor a data:, http: or https: URL)") from None
    if not data:
        raise InvalidImage(f"{what} is empty")
    return data


def parse_data_url(url: str, settings: ImageSettings) -> bytes:
    """`data:[<media type>][;base64],<data>` to bytes. The media type, when given, must be an
    image type; what the bytes really are is decided by decoding them."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise InvalidImage("image data: URL has no comma (data:image/png;base64,<data>)")
    params = [part.strip().lower() for part in header[len("data:"):].split(";")]
    media_type = params[0]
    if media_type == "image/svg+xml":
        raise InvalidImage("SVG images are not accepted (a vector format): send PNG, JPEG or WebP")
    if media_type and not media_type.startswith("image/"):
        raise InvalidImage(f"image data: URL has media type {media_type!r}, not an image type")
    if "base64" in params[1:]:
        return decode_base64(payload, settings, what="image data: URL")
    _check_encoded_size(len(payload) // 3, settings)  # every byte is at least one character of text
    data = urllib.parse.unquote_to_bytes(payload)
    _check_encoded_size(len(data), settings)
    if not data:
        raise InvalidImage("image data: URL is empty")
    return data


def decode_image(data: bytes, settings: ImageSettings, *, source: str = "data", url: str = "",
                 budget: DecodedBudget | None = None, keep_picture: bool = False) -> LoadedImage:
    """Check and decode `data`: size, format, dimensions (from the header, before any pixel is
    decoded), the first frame decoded completely and the file complete to its end (truncated or
    corrupt files are refused), then hashed. Raises InvalidImage or ImageTooLarge; never anything
    else for any input bytes."""
    _check_encoded_size(len(data), settings)
    formats = settings.image_formats
    try:
        image = Image.open(BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        # Pillow's own guard (more than 2 x Image.MAX_IMAGE_PIXELS) fires while reading the header
        raise ImageTooLarge(f"image has more pixels than image_max_pixels ({settings.image_max_pixels})") from None
    except Exception:  # noqa: BLE001 - hostile bytes make decoders raise anything
        raise InvalidImage(_not_an_image(data, formats)) from None
    try:
        width, height = image.size
        kind = image.format or "?"
        if width <= 0 or height <= 0:
            raise InvalidImage(f"{kind} image has no pixels ({width}x{height})")
        if width * height > settings.image_max_pixels:
            raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels, more than "
                                f"image_max_pixels ({settings.image_max_pixels})")
        decoded = width * height * DECODED_BYTES_PER_PIXEL
        if budget is not None:
            budget.take(decoded)
        try:
            image.load()  # the first frame (GIF, animated WebP); a file cut short mostly raises here
            _check_complete(data, kind)  # ... and where it does not, here
            digest = _pixel_hash(image)
        except Image.DecompressionBombError:
            raise ImageTooLarge(f"image has more pixels than image_max_pixels ({settings.image_max_pixels})") from None
        except Exception as exc:  # noqa: BLE001 - hostile bytes make decoders raise anything
            raise InvalidImage(f"{kind} image is truncated or corrupt ({_reason(exc)})") from None
        kept = image if keep_picture else None
        return LoadedImage(data=data, format=kind, mime=MIME_TYPES.get(kind, "application/octet-stream"),
                           width=width, height=height, sha256=digest, decoded_bytes=decoded,
                           source=source, url=url, picture=kept)
    finally:
        if not keep_picture:
            image.close()


def _check_complete(data: bytes, kind: str) -> None:
    """Raise OSError when the file ends before its format's end, though its first frame decoded.

    Pillow stops reading a PNG once the pixels are inflated and a GIF once the first frame is
    read: a PNG cut in its last bytes (the zlib checksum, the IDAT CRC, IEND) or a GIF without
    its trailer (or its later frames) loads without an error. Such a file is truncated all the
    same, and refused like any other. JPEG and WebP decoders already refuse every cut."""
    if kind == "PNG":
        stream = BytesIO(data)
        with Image.open(stream, formats=["PNG"]) as again:
            again.verify()  # every chunk from the pixels' through IEND's header, CRCs checked
        if data[stream.tell():stream.tell() + 4] != _IEND_CRC:  # verify() stops before it
            raise OSError("truncated PNG file (IEND)")
    elif kind == "GIF":
        _walk_gif(data)


def _walk_gif(data: bytes) -> None:
    """Follow a GIF's blocks (GIF89a spec: extensions and images as sub-block chains) to its
    trailer; OSError where the file ends first or a block is of no known kind."""
    def byte(at: int) -> int:
        if at >= len(data):
            raise OSError("truncated GIF file (no trailer)")
        return data[at]

    def color_table(flags: int) -> int:
        return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0

    def sub_blocks(at: int) -> int:
        while (size := byte(at)) != 0:
            at += 1 + size
        return at + 1

    at = 13 + color_table(byte(10))  # header, logical screen descriptor, global color table
    while (kind := byte(at)) != 0x3B:  # the trailer
        if kind == 0x21:  # extension: label, then sub-blocks
            at = sub_blocks(at + 2)
        elif kind == 0x2C:  # image: descriptor, local color table, LZW code size, sub-blocks
            at = sub_blocks(at + 10 + color_table(byte(at + 9)) + 1)
        else:
            raise OSError(f"corrupt GIF file (block 0x{kind:02x} at byte {at})")


def _pixel_hash(image: Image.Image) -> str:
    canonical = image if image.mode in _HASHED_AS_IS else image.convert("RGBA")
    digest = hashlib.sha256(f"{canonical.mode} {canonical.width}x{canonical.height}\n".encode())
    digest.update(canonical.tobytes())
    return digest.hexdigest()


def _check_encoded_size(size: int, settings: ImageSettings) -> None:
    if size > settings.image_max_bytes:
        raise ImageTooLarge(f"image is {size} bytes or more, more than image_max_bytes "
                            f"({settings.image_max_bytes})")


def _not_an_image(data: bytes, formats: list[str]) -> str:
    allowed = ", ".join(formats)
    head = data[:512].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096].lower():
        return f"SVG images are not accepted (a vector format): send one of {allowed}"
    if head.startswith((b"<!doctype html", b"<html")):
        return f"the image is an HTML page, not an image of an accepted format ({allowed})"
    return f"the image is not of an accepted format ({allowed}), or its header is corrupt"


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
