"""Fetching image URLs without becoming a proxy into the private network (SSRF).

Every hop (the URL, then each redirect) is checked the same way before anything is sent:
scheme http or https; no credentials in the URL; the host matches `image_fetch_hosts`; the name is
resolved once, here, and every address it resolves to must be public (or inside one of
`image_fetch_private_networks`); the connection then goes to the checked address itself (the URL
is rewritten to the IP; the Host header and, for https, the TLS server name and certificate
check keep the host name), so a second DNS answer (DNS rebinding) is never asked for. No proxy
from the environment is used (a proxy would resolve the name itself). The body is read as it
streams and refused once it passes `image_max_bytes`; `Accept-Encoding: identity` is asked for
and a compressed answer refused (a small gzip body can inflate without bound); one deadline,
`image_fetch_timeout`, covers DNS, connects, redirects and the whole body.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from server.images.errors import ImageFetchFailed, ImageRefused, ImageTooLarge
from server.settings import ImageSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses the name resolves to. The default asks the system resolver;
# tests pass their own to force answers a real resolver would not give.
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_USER_AGENT = "qwen3-reranker-image-fetch"


@dataclass(frozen=True)
class Fetched:
    data: bytes
    url: str  # the address the bytes came from, after redirects


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def fetch_image(url: str, settings: ImageSettings, resolver: Resolver | None = None, *,
                      verify: ssl.SSLContext | None = None) -> Fetched:
    """GET an image URL under every rule above. Raises ImageRefused (the URL or a hop is not
    allowed), ImageTooLarge (the body passes image_max_bytes) or ImageFetchFailed. `verify`: the
    TLS context certificates are checked with (default: the system's trust store via certifi, as
    httpx does; tests pass one that trusts their own CA)."""
    if not settings.image_fetch:
        raise ImageRefused("image URLs are not fetched by this server (image_fetch is off): send the "
                           "image as a data: URL or base64")
    timeout = settings.image_fetch_timeout
    try:
        return await asyncio.wait_for(_fetch(url, settings, resolver or system_resolver, verify), timeout)
    except asyncio.TimeoutError:
        raise ImageFetchFailed(f"fetching the image took longer than image_fetch_timeout "
                               f"({timeout:g} s)") from None


async def _fetch(url: str, settings: ImageSettings, resolver: Resolver,
                 verify: ssl.SSLContext | None) -> Fetched:
    timeout = httpx.Timeout(settings.image_fetch_timeout)
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout,
                                 verify=verify if verify is not None else True) as client:
        for _hop in range(settings.image_fetch_max_redirects + 1):
            target = await _checked(url, settings, resolver)
            headers = {"Host": target.host_header, "Accept": "image/*",
                       "Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
            extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
            try:
                async with client.stream("GET", target.connect_url, headers=headers,
                                         extensions=extensions) as response:
                    location = response.headers.get("location")
                    if response.status_code in (301, 302, 303, 307, 308) and location:
                        url = str(target.url.join(location))
                        continue
                    return Fetched(await _read_body(response, settings), str(target.url))
            except httpx.TimeoutException:
                raise ImageFetchFailed(f"the image host {target.host} did not answer within "
                                       f"image_fetch_timeout ({settings.image_fetch_timeout:g} s)") from None
            except httpx.HTTPError as exc:
                raise ImageFetchFailed(f"could not fetch the image from {target.host}: "
                                       f"{_connection_problem(exc)}") from None
    raise ImageRefused(f"the image URL redirects more than image_fetch_max_redirects "
                       f"({settings.image_fetch_max_redirects}) times")


async def _read_body(response: httpx.Response, settings: ImageSettings) -> bytes:
    if response.status_code != 200:
        raise ImageFetchFailed(f"the image URL answered HTTP {response.status_code}")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ImageFetchFailed(f"the image URL answered with content-encoding {encoding!r}; "
                               "images are read uncompressed only")
    limit = settings.image_max_bytes
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ImageTooLarge(f"the image URL's answer is {declared} bytes, more than "
                            f"image_max_bytes ({limit})")
    body = bytearray()
    async for chunk in response.aiter_raw():
        if len(body) + len(chunk) > limit:
            raise ImageTooLarge(f"the image URL's answer is more than image_max_bytes ({limit} bytes)")
        body += chunk
    if not body:
        raise ImageFetchFailed("the image URL answered an empty body")
    return bytes(body)


@dataclass(frozen=True)
class _Target:
    url: httpx.URL          # as the client named it
    host: str               # its host name (ASCII), for SNI and messages
    host_header: str        # host[:port] as in the URL
    connect_url: httpx.URL  # the same URL with the checked IP as its host


async def _checked(url: str, settings: ImageSettings, resolver: Resolver) -> _Target:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ImageRefused("the image URL is not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise ImageRefused(f"image URL scheme {parsed.scheme or '(none)'!r} is not accepted "
                           "(data:, http:, https:)")
    if parsed.userinfo:
        raise ImageRefused("image URLs with credentials (user:password@) are not accepted")
    host = parsed.raw_host.decode("ascii").lower().rstrip(".")
    if not host:
        raise ImageRefused("the image URL has no host")
    if not host_allowed(host, settings.image_fetch_hosts):
        raise ImageRefused(f"image host {host} is not in image_fetch_hosts")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    literal = _ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            answers = await resolver(host, port)
        except OSError:
            raise ImageFetchFailed(f"image host {host} does not resolve") from None
        addresses = [a for a in (_ip(text) for text in answers) if a is not None]
        if not addresses:
            raise ImageFetchFailed(f"image host {host} does not resolve")
    networks = [ipaddress.ip_network(cidr, strict=False) for cidr in settings.image_fetch_private_networks]
    for address in addresses:  # all of them: the connection must not depend on which one is used
        if not address_allowed(address, networks):
            raise ImageRefused(f"image host {host} is at {address}, a {_kind(address)} address: not "
                               "fetched (image_fetch_private_networks lists those allowed)")
    pinned = _unmapped(addresses[0])
    netloc = parsed.netloc.decode("ascii")
    return _Target(parsed, host, netloc, parsed.copy_with(host=str(pinned)))


def host_allowed(host: str, patterns: list[str]) -> bool:
    """`host` (lower case, no trailing dot) against image_fetch_hosts: `*` any host, `*.x.com`
    any subdomain of x.com (not x.com itself), otherwise the exact name or IP."""
    literal = _ip(host)
    for pattern in patterns:
        if pattern == "*" or pattern == host:
            return True
        if literal is not None:
            other = _ip(pattern)
            if other is not None and _unmapped(other) == _unmapped(literal):
                return True
        elif pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def address_allowed(address: IPAddress, private_networks: list) -> bool:
    """Public, or inside one of the networks the operator allows. An IPv6 address that carries
    an IPv4 one (IPv4-mapped, 6to4, Teredo, NAT64) is judged by that one too."""
    address = _unmapped(address)
    if any(address in network for network in private_networks):
        return True
    if address in _NAT64:  # DNS64 on an IPv6-only network: the IPv4 address it carries decides
        return address_allowed(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), private_networks)
    return all(_public(a) for a in _embedded(address))


def _public(address: IPAddress) -> bool:
    return (address.is_global and not address.is_multicast and not address.is_reserved
            and not address.is_loopback and not address.is_link_local and not address.is_private
            and not address.is_unspecified)


def _embedded(address: IPAddress) -> list[IPAddress]:
    found: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
    return found


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None


def _kind(address: IPAddress) -> str:
    address = _unmapped(address)
    for name in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    return "non-public"


def _connection_problem(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "the connection failed (refused, unreachable, or TLS)"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the answer is not valid HTTP"
    return type(exc).__name__
