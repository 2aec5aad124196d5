"""Image input: every image a request names becomes a checked `LoadedImage`, or a domain error.

Domain code, no HTTP: the refusals are the errors of server/images/errors.py, which the edge
(server/errors.py) answers as 4xx JSON with `detail` (422 malformed, 413 too large, 400 a source
this server does not read, 422 a URL that could not be read). Settings: `ImageSettings` in
server/settings.py (the flat `Settings` object is one); docs/deployment.md, "Image input safety".

The interface a dialect or the scoring core uses:

    async def load_image(source: str, settings: ImageSettings, *, where: str = "",
                         keep_picture: bool = False, resolver: Resolver | None = None,
                         budget: DecodedBudget | None = None) -> LoadedImage
    async def load_images(sources: Sequence[str], settings: ImageSettings, *,
                          where: Sequence[str] | None = None, keep_picture: bool = False,
                          resolver: Resolver | None = None) -> list[LoadedImage]
    def decode_image(data: bytes, settings: ImageSettings, *, source="data", url="",
                     budget=None, keep_picture=False) -> LoadedImage   (bytes in hand; blocking)
    def decoded_bytes(images: Iterable[LoadedImage]) -> int   (what admission counts)

`where` names the image in a refusal ("documents[3]: image is 5000x5000 = ... pixels");
`keep_picture` keeps the decoded first frame on the result (`picture`, also what `to_pil()`
returns) for a caller that resizes it next, instead of decoding it again.

`source` is one of:
- a data: URL, `data:image/png;base64,...` (always accepted; a non-base64 data: URL is
  percent-decoded);
- bare base64 (Jina's `{"image": "<base64>"}`; standard or URL-safe alphabet, padding optional);
- an http(s) URL: fetched only with `image_fetch` on, from `image_fetch_hosts`, at public
  addresses (or `image_fetch_private_networks`), server/images/fetch.py;
any other scheme (file:, ftp:, gopher:, ...) is refused.

`LoadedImage` (server/images/decode.py): `data` (the encoded bytes), `format`, `mime`, `width`,
`height`, `sha256` (of the decoded pixels: the score cache's key), `decoded_bytes` (width x height
x 3: what admission control counts, `Admission.admit(..., image_bytes=)`), `source`, `url`,
`picture`; `data_url()` (for vLLM's chat-style inputs) and `to_pil()` (the decoded first frame).

`load_images` loads a request's images (the same source string once) with bounded concurrency,
charging each image's decoded size to `image_max_request_bytes` from its header, before its
pixels are decoded; the first refusal cancels the rest and is raised.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence

from server.images.decode import DecodedBudget, LoadedImage, decode_base64, decode_image, parse_data_url
from server.images.errors import ImageError, ImageFetchFailed, ImageRefused, ImageTooLarge, InvalidImage
from server.images.fetch import Resolver, fetch_image
from server.settings import ImageSettings

__all__ = ["DecodedBudget", "ImageError", "ImageFetchFailed", "ImageRefused", "ImageTooLarge",
           "InvalidImage", "LoadedImage", "Resolver", "decode_image", "decoded_bytes", "load_image",
           "load_images"]

# Images of one request fetched and decoded at once: enough to overlap fetches, few enough that
# the pixels being decoded at any moment stay a small multiple of one image.
CONCURRENCY = 8
# A URI scheme: base64 never contains ":", so a string starting with one is a URL of some
# scheme. Its length is bounded so that a long base64 string is not scanned for a colon.
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.\-]{0,31}):")


async def load_image(source: str, settings: ImageSettings, *, where: str = "",
                     keep_picture: bool = False, resolver: Resolver | None = None,
                     budget: DecodedBudget | None = None) -> LoadedImage:
    """One image from a data: URL, bare base64 or an http(s) URL (see the module docstring).
    `where` (e.g. "documents[3].image") starts every refusal's detail; `keep_picture` keeps the
    decoded first frame on the result. Raises InvalidImage, ImageTooLarge, ImageRefused or
    ImageFetchFailed."""
    try:
        return await _load(source, settings, keep_picture, resolver, budget)
    except ImageError as exc:
        if where:
            raise type(exc)(f"{where}: {exc.detail}") from None
        raise


async def _load(source: str, settings: ImageSettings, keep_picture: bool, resolver: Resolver | None,
                budget: DecodedBudget | None) -> LoadedImage:
    if not isinstance(source, str) or not source.strip():
        raise InvalidImage("image is empty: send a data: URL, base64, or an http(s) URL")
    match = _SCHEME.match(source)
    scheme = match.group(1).lower() if match else ""
    url = ""
    if scheme == "data":
        data, kind = parse_data_url(source.strip(), settings), "data"
    elif scheme in ("http", "https"):
        fetched = await fetch_image(source.strip(), settings, resolver)
        data, kind, url = fetched.data, "url", fetched.url
    elif scheme:
        raise ImageRefused(f"image URL scheme {scheme!r} is not accepted (data:, http:, https:)")
    else:
        data, kind = decode_base64(source, settings), "base64"
    return await asyncio.to_thread(decode_image, data, settings, source=kind, url=url, budget=budget,
                                   keep_picture=keep_picture)


async def load_images(sources: Sequence[str], settings: ImageSettings, *,
                      where: Sequence[str] | None = None, keep_picture: bool = False,
                      resolver: Resolver | None = None) -> list[LoadedImage]:
    """The images of one request, in order, under image_max_request_bytes together. `where`:
    one name per source for the refusal's detail (a repeated source is named by its first)."""
    budget = DecodedBudget(settings.image_max_request_bytes)
    gate = asyncio.Semaphore(CONCURRENCY)
    names = dict(zip(reversed(sources), reversed(where))) if where is not None else {}

    async def one(source: str) -> LoadedImage:
        async with gate:
            return await load_image(source, settings, where=names.get(source, ""),
                                    keep_picture=keep_picture, resolver=resolver, budget=budget)

    unique = list(dict.fromkeys(sources))
    tasks = [asyncio.ensure_future(one(source)) for source in unique]
    try:
        loaded = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    by_source = dict(zip(unique, loaded))
    return [by_source[source] for source in sources]


def decoded_bytes(images: Iterable[LoadedImage]) -> int:
    """Decoded bytes of a request's images for admission control, each distinct picture once
    (the core scores a picture once however many documents repeat it)."""
    return sum({image.sha256: image.decoded_bytes for image in images}.values())
