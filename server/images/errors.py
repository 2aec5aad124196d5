"""Domain errors of image input (server/images/).

Like the scoring core's errors (server/scoring/errors.py) they say *what* is wrong with an image;
the HTTP edge (server/errors.py) decides the status and the body:

- `InvalidImage` 422: not decodable, truncated or corrupt, not an allowed format, bad base64 or
  data: URL (the body is valid JSON; what it holds cannot be used, like the core's other 422s).
- `ImageTooLarge` 413: more encoded bytes than `image_max_bytes` (sent or fetched), more pixels
  than `image_max_pixels`, more decoded bytes in one request than `image_max_request_bytes`.
- `ImageRefused` 400: the source is one this server does not read: a scheme other than data:,
  http: and https:, an image URL while `image_fetch` is off, a host outside `image_fetch_hosts`,
  an address that is private, loopback, link-local, multicast or reserved (and not listed in
  `image_fetch_private_networks`), URL credentials, too many redirects. 400 rather than 403:
  the request is wrong whoever sends it (403 would read as "your credentials may not do this").
- `ImageFetchFailed` 422: an allowed URL could not be read: the host does not resolve, the
  connection or TLS handshake failed, an answer other than 200, `image_fetch_timeout` passed.
"""

from __future__ import annotations

from server.scoring.errors import InvalidInput, ScoringError, TooLarge


class ImageError(ScoringError):
    """Base class of every image refusal: `detail` is a sentence a client can act on."""


class InvalidImage(ImageError, InvalidInput):
    """The image cannot be decoded as sent (format, truncation, corruption, encoding)."""


class ImageTooLarge(ImageError, TooLarge):
    """The image (or the request's images together) is bigger than this server takes."""


class ImageRefused(ImageError):
    """The image's source is one this server does not read (scheme, host, address, redirects)."""


class ImageFetchFailed(ImageError):
    """An allowed image URL could not be read (DNS, connection, HTTP status, timeout)."""
