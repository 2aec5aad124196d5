"""Fetching image URLs (server/images/fetch.py) against real HTTP servers on this machine.

The servers are Python's http.server in threads on 127.0.0.1 (and one on 127.0.0.2, to show a
refused redirect never reaches a server that is there). Each logs the requests it got, so a
test can say that a refused URL was never requested. Two tests force DNS answers the machine's
resolver cannot give (a name resolving to a chosen address, a name whose answer changes) with a
fake resolver, named as such.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from server.errors import http_error
from server.images import ImageFetchFailed, ImageRefused, ImageTooLarge, InvalidImage, load_image
from server.images.fetch import address_allowed, host_allowed
from server.settings import Settings


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (20, 10), bytes(range(200)) * 3).save(out, "PNG")
    return out.getvalue()


PNG = png_bytes()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the test reads server.requests instead
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Host"), dict(self.headers)))
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            getattr(self, "route_" + url.path.strip("/").replace("-", "_"), self.route_missing)(query)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: what a refused stream looks like from here

    def send(self, status: int, body: bytes, content_type: str = "image/png", **headers):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def route_img(self, query):
        self.send(200, PNG)

    def route_missing(self, query):
        self.send(404, b"not here", "text/plain")

    def route_page(self, query):
        self.send(200, b"<!DOCTYPE html><html><body>an error page</body></html>", "text/html")

    def route_gzip(self, query):
        self.send(200, PNG, Content_Encoding="gzip")

    def route_declared_huge(self, query):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        self.wfile.write(PNG)

    def route_endless(self, query):
        # no Content-Length: an image "of unknown length" that never ends
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = PNG + bytes(64 * 1024)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.wfile.write(chunk)
            self.server.sent_after_headers += len(chunk)

    def route_slow(self, query):
        # headers at once, then one byte every 0.2 s: each read returns in time, the whole never
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        for byte in PNG:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(0.2)

    def route_silent(self, query):
        time.sleep(float(query.get("s", "5")))  # accepts, then says nothing

    def route_redirect(self, query):
        self.send(int(query.get("status", "302")), b"", "text/plain", Location=query["to"])

    def route_loop(self, query):
        self.send(302, b"", "text/plain", Location="/loop")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), Handler)
        self.requests: list = []
        self.sent_after_headers = 0

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def serve(host: str):
    server = Server(host)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def server():
    srv, thread = serve("127.0.0.1")
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def other_server():
    """A second server on 127.0.0.2: a loopback address the tests do not allow."""
    srv, thread = serve("127.0.0.2")
    yield srv
    srv.shutdown()
    srv.server_close()


def local(**extra) -> Settings:
    """Fetching on, from 127.0.0.1 only (the test server's address, allowed as a private network)."""
    values = {"image_fetch": True, "image_fetch_hosts": ["127.0.0.1"],
              "image_fetch_private_networks": ["127.0.0.1/32"]}
    return Settings(**{**values, **extra})


def fetch(url: str, settings: Settings, resolver=None):
    return asyncio.run(load_image(url, settings, resolver=resolver))


# --- allowed -----------------------------------------------------------------------------------

def test_an_allowed_url_is_fetched_and_decoded(server):
    image = fetch(f"{server.base}/img", local())
    assert (image.format, image.width, image.height, image.data) == ("PNG", 20, 10, PNG)
    assert (image.source, image.url) == ("url", f"{server.base}/img")
    (path, host, headers), = server.requests
    assert host == server.base.removeprefix("http://")
    assert headers.get("Accept-Encoding") == "identity"


def test_a_redirect_to_an_allowed_url_is_followed(server):
    image = fetch(f"{server.base}/redirect?to=/img", local())
    assert image.data == PNG and image.url == f"{server.base}/img"
    assert [p for p, _, _ in server.requests] == ["/redirect?to=/img", "/img"]


# --- refused before anything is sent ---------------------------------------------------------

def test_by_default_no_url_is_fetched(server):
    with pytest.raises(ImageRefused, match="image_fetch is off"):
        fetch(f"{server.base}/img", Settings())
    assert server.requests == []


def test_loopback_is_refused_even_for_an_allowed_host(server):
    with pytest.raises(ImageRefused, match="at 127.0.0.1, a loopback address"):
        fetch(f"{server.base}/img", Settings(image_fetch=True, image_fetch_hosts=["127.0.0.1"]))
    assert server.requests == []


def test_localhost_by_name_is_refused_as_loopback(server):
    port = server.server_address[1]
    with pytest.raises(ImageRefused, match="loopback address"):
        fetch(f"http://localhost:{port}/img", Settings(image_fetch=True, image_fetch_hosts=["*"]))
    assert server.requests == []


def test_a_host_outside_image_fetch_hosts_is_refused_without_a_dns_lookup(server):
    asked = []

    async def fake_resolver(host, port):  # fake: records that it is never asked
        asked.append(host)
        return ["127.0.0.1"]

    settings = local(image_fetch_hosts=["images.example.com", "*.cdn.example.com"])
    for url in ("http://evil.example.net/a.png", "http://cdn.example.com/a.png",
                f"{server.base}/img"):
        with pytest.raises(ImageRefused, match="not in image_fetch_hosts"):
            fetch(url, settings, fake_resolver)
    assert asked == [] and server.requests == []


@pytest.mark.parametrize("target", [
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0:{port}/img",
    "http://10.0.0.1/img",
    "http://192.168.1.1/img",
    "http://100.64.0.1/img",
    "http://224.0.0.1/img",
    "http://[::1]:{port}/img",
    "http://[::ffff:127.0.0.2]:{port}/img",
    "http://[fe80::1]/img",
    "http://[fd00::1]/img",
    "http://[2002:7f00:1::1]/img",
    "http://127.0.0.2:{port}/img",
])
def test_a_redirect_to_a_non_public_address_is_refused(server, target):
    target = target.format(port=server.server_address[1])
    settings = local(image_fetch_hosts=["*"])
    with pytest.raises(ImageRefused, match="address: not fetched"):
        fetch(f"{server.base}/redirect?to={target}", settings)
    assert len(server.requests) == 1, "only the redirect itself was requested"


def test_a_redirect_to_a_loopback_server_that_is_there_never_reaches_it(server, other_server):
    with pytest.raises(ImageRefused, match="at 127.0.0.2, a loopback address"):
        fetch(f"{server.base}/redirect?to={other_server.base}/img", local(image_fetch_hosts=["*"]))
    assert other_server.requests == []
    # and it is reachable: allowed, the same redirect is followed to it
    image = fetch(f"{server.base}/redirect?to={other_server.base}/img",
                  local(image_fetch_hosts=["*"], image_fetch_private_networks=["127.0.0.0/30"]))
    assert image.data == PNG and len(other_server.requests) == 1


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1:70/_x",
                                    "ftp://127.0.0.1/a.png"])
def test_a_redirect_to_another_scheme_is_refused(server, target):
    with pytest.raises(ImageRefused, match="scheme .* is not accepted"):
        fetch(f"{server.base}/redirect?to={target}", local())


def test_a_redirect_to_a_host_outside_the_allow_list_is_refused(server):
    with pytest.raises(ImageRefused, match="not in image_fetch_hosts"):
        fetch(f"{server.base}/redirect?to=http://elsewhere.example.com/a.png", local())


def test_redirects_are_limited(server):
    with pytest.raises(ImageRefused, match=r"more than image_fetch_max_redirects \(2\)"):
        fetch(f"{server.base}/loop", local(image_fetch_max_redirects=2))
    assert len(server.requests) == 3
    with pytest.raises(ImageRefused, match="image_fetch_max_redirects"):
        fetch(f"{server.base}/redirect?to=/img", local(image_fetch_max_redirects=0))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.png", "file:///etc/hosts", "gopher://127.0.0.1/"])
def test_non_http_schemes_are_refused_with_fetching_on(url):
    with pytest.raises(ImageRefused, match="scheme"):
        fetch(url, local(image_fetch_hosts=["*"]))


def test_credentials_in_the_url_are_refused(server):
    port = server.server_address[1]
    with pytest.raises(ImageRefused, match="credentials"):
        fetch(f"http://user:secret@127.0.0.1:{port}/img", local())
    assert server.requests == []


# --- DNS: one answer, checked, and the connection pinned to it ---------------------------------

def test_the_connection_goes_to_the_checked_address_and_dns_is_asked_once(server):
    # fake resolver (forced): "images.test" resolves to the test server only through it, and its
    # answer changes after the first call, as a DNS-rebinding attacker's server does. The fetch
    # succeeds, so the connection went to the first, checked answer, and it was asked once.
    answers = [["127.0.0.1"], ["10.9.9.9"], ["169.254.169.254"]]
    asked = []

    async def fake_rebinding_resolver(host, port):
        asked.append((host, port))
        return answers[len(asked) - 1]

    port = server.server_address[1]
    settings = local(image_fetch_hosts=["images.test"])
    image = fetch(f"http://images.test:{port}/img", settings, fake_rebinding_resolver)
    assert image.data == PNG and image.url == f"http://images.test:{port}/img"
    assert asked == [("images.test", port)]
    (_, host, _), = server.requests
    assert host == f"images.test:{port}", "the Host header keeps the name"


def test_a_name_with_any_non_public_address_is_refused(server):
    async def fake_resolver(host, port):  # forced: one public and one private answer
        return ["93.184.216.34", "10.0.0.5"]

    with pytest.raises(ImageRefused, match="at 10.0.0.5, a private address"):
        fetch("http://mixed.test/a.png", local(image_fetch_hosts=["*"]), fake_resolver)


def test_a_name_that_does_not_resolve_is_a_fetch_failure():
    with pytest.raises(ImageFetchFailed, match="does not resolve"):
        fetch("http://no-such-host.invalid/a.png", local(image_fetch_hosts=["*"]))


# --- limits while reading --------------------------------------------------------------------

def test_an_endless_body_is_cut_at_image_max_bytes_while_it_streams(server):
    started = time.monotonic()
    with pytest.raises(ImageTooLarge, match=r"more than image_max_bytes \(200000 bytes\)"):
        fetch(f"{server.base}/endless", local(image_max_bytes=200_000, image_fetch_timeout=15))
    assert time.monotonic() - started < 5, "refused as it streamed, not at the timeout"
    time.sleep(0.3)
    sent = server.sent_after_headers
    time.sleep(0.5)
    assert server.sent_after_headers - sent < 2_000_000, "the connection was closed, not drained"


def test_a_declared_length_over_the_limit_is_refused_before_reading(server):
    with pytest.raises(ImageTooLarge, match="10{12} bytes, more than image_max_bytes"):
        fetch(f"{server.base}/declared-huge", local())


def test_a_slow_drip_is_cut_by_the_total_timeout(server):
    started = time.monotonic()
    with pytest.raises(ImageFetchFailed, match=r"image_fetch_timeout \(1 s\)"):
        fetch(f"{server.base}/slow", local(image_fetch_timeout=1))
    assert time.monotonic() - started < 2.5


def test_a_server_that_accepts_and_stays_silent_is_cut_by_the_timeout(server):
    started = time.monotonic()
    with pytest.raises(ImageFetchFailed, match="image_fetch_timeout"):
        fetch(f"{server.base}/silent?s=5", local(image_fetch_timeout=0.5))
    assert time.monotonic() - started < 2


# --- answers that are not an image ----------------------------------------------------------

def test_an_http_error_status_is_a_fetch_failure(server):
    with pytest.raises(ImageFetchFailed, match="answered HTTP 404"):
        fetch(f"{server.base}/missing", local())


def test_an_html_page_instead_of_an_image_is_an_invalid_image(server):
    with pytest.raises(InvalidImage, match="HTML page"):
        fetch(f"{server.base}/page", local())


def test_a_compressed_answer_is_refused(server):
    with pytest.raises(ImageFetchFailed, match="content-encoding 'gzip'"):
        fetch(f"{server.base}/gzip", local())


def test_https_to_a_server_without_tls_is_a_fetch_failure(server):
    port = server.server_address[1]
    with pytest.raises(ImageFetchFailed, match="connection failed"):
        fetch(f"https://127.0.0.1:{port}/img", local())


def test_a_closed_port_is_a_fetch_failure(server):
    srv, thread = serve("127.0.0.1")
    port = srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    with pytest.raises(ImageFetchFailed, match="connection failed"):
        fetch(f"http://127.0.0.1:{port}/img", local())


def test_fetch_refusals_are_4xx_at_the_edge():
    assert http_error(ImageFetchFailed("x")).status == 422
    assert http_error(ImageRefused("x")).status == 400


# --- the address and host rules themselves -------------------------------------------------------

@pytest.mark.parametrize("address, allowed", [
    ("93.184.216.34", True), ("8.8.8.8", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("127.255.255.254", False), ("0.0.0.0", False), ("10.1.2.3", False),
    ("172.16.0.1", False), ("192.168.0.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("224.0.0.251", False), ("239.255.255.250", False), ("240.0.0.1", False),
    ("255.255.255.255", False), ("192.0.2.1", False), ("198.18.0.1", False),
    ("::1", False), ("::", False), ("fe80::1", False), ("fc00::1", False), ("ff02::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False), ("::ffff:8.8.8.8", True),
    ("2002:0a00:0001::1", False),           # 6to4 carrying 10.0.0.1
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo carrying a private client address
    ("64:ff9b::7f00:1", False),             # NAT64 of 127.0.0.1
    ("64:ff9b::808:808", True),             # NAT64 of 8.8.8.8
    ("fd00:ec2::254", False),               # the EC2 metadata service over IPv6
])
def test_which_addresses_are_fetched_from(address, allowed):
    assert address_allowed(ipaddress.ip_address(address), []) is allowed


def test_listed_private_networks_are_allowed_and_only_those():
    networks = [ipaddress.ip_network("10.1.2.0/24")]
    assert address_allowed(ipaddress.ip_address("10.1.2.3"), networks)
    assert address_allowed(ipaddress.ip_address("::ffff:10.1.2.3"), networks)
    assert not address_allowed(ipaddress.ip_address("10.1.3.3"), networks)
    assert not address_allowed(ipaddress.ip_address("127.0.0.1"), networks)


@pytest.mark.parametrize("host, patterns, allowed", [
    ("img.example.com", ["img.example.com"], True),
    ("a.cdn.example.com", ["*.cdn.example.com"], True),
    ("cdn.example.com", ["*.cdn.example.com"], False),
    ("evilcdn.example.com", ["*.cdn.example.com"], False),
    ("img.example.com.evil.net", ["img.example.com"], False),
    ("anything.net", ["*"], True),
    ("::ffff:127.0.0.1", ["127.0.0.1"], True),
    ("127.0.0.1", ["*.0.0.1"], False),
    ("example.com", [], False),
])
def test_host_patterns(host, patterns, allowed):
    assert host_allowed(host, patterns) is allowed


def test_an_image_url_in_base64_is_not_mistaken_for_base64():
    # a URL is never decoded as base64, and bare base64 is never fetched
    url = base64.b64encode(b"http://127.0.0.1/").decode()
    with pytest.raises(InvalidImage):
        fetch(url, local())


# --- https: the connection pinned to the checked IP, the certificate checked against the name ---

def _certificates(tmp_path, name: str):
    """A CA and a server certificate for `name` signed by it (files: ca.pem, cert.pem, key.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "cert.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))


@pytest.fixture
def tls_server(tmp_path):
    import ssl
    _certificates(tmp_path, "images.test")
    srv = Server("127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    yield srv, trust
    srv.shutdown()
    srv.server_close()


def test_https_goes_to_the_checked_ip_with_the_names_certificate_checked(tls_server):
    from server.images.fetch import fetch_image

    srv, trust = tls_server
    port = srv.server_address[1]

    async def fake_resolver(host, port_):  # forced: these names resolve to the test server
        return ["127.0.0.1"]

    settings = local(image_fetch_hosts=["images.test", "other.test"])
    got = asyncio.run(fetch_image(f"https://images.test:{port}/img", settings, fake_resolver, verify=trust))
    assert got.data == PNG
    (_, host, _), = srv.requests
    assert host == f"images.test:{port}"
    # the same address under a name the certificate does not carry: the check uses the name
    with pytest.raises(ImageFetchFailed, match="connection failed"):
        asyncio.run(fetch_image(f"https://other.test:{port}/img", settings, fake_resolver, verify=trust))
    # and the certificate must chain to a trusted CA (the default trust store does not know it)
    with pytest.raises(ImageFetchFailed, match="connection failed"):
        asyncio.run(fetch_image(f"https://images.test:{port}/img", settings, fake_resolver))
