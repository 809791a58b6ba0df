"""Media ingress (app.media): decoding, limits, SSRF refusals and real fetches over loopback.

Offline by construction: refused addresses are checked against a recording transport that never
connects (``NoNetwork``), and real fetches go through ``LoopbackOnly``, which raises instead of
connecting anywhere outside 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import random
import re
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from app.media import MediaLoader
from app.settings import MediaConfig
from models.errors import MediaError
from models.images import ImageRefused
from models.types import ImageInput

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# ---------------------------------------------------------------------------------------------
# image builders


def encode(img: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def two_colour(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue."""
    img = Image.new("RGB", size, RED)
    img.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return img


def noise_png(size: tuple[int, int] = (64, 64)) -> bytes:
    rng = random.Random(0)
    return encode(Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3)), "PNG")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height; the pixel data is a token 1 KB (no allocation)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


PNG = encode(two_colour(), "PNG")


# ---------------------------------------------------------------------------------------------
# transports and resolvers (test doubles)


class NoNetwork(httpx.AsyncBaseTransport):
    """Records requests and never connects: SSRF refusals must happen before it is reached."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        raise httpx.ConnectError("test transport: no network", request=request)


class LoopbackOnly(httpx.AsyncBaseTransport):
    """A real HTTP transport that refuses (AssertionError) to connect outside 127.0.0.0/8."""

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        self.inner = httpx.AsyncHTTPTransport(verify=verify)
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        address = ipaddress.ip_address(request.url.host)  # pinned: always an IP, never a name
        if address not in ipaddress.ip_network("127.0.0.0/8"):
            raise AssertionError(f"test tried to connect to {address}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FakeDNS:
    """A fixed table of answers per call (the last answer repeats); records lookups."""

    def __init__(self, table: dict[str, Sequence[Sequence[str]]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        answers = self.table[host]
        answer = answers[min(sum(h == host for h in self.calls), len(answers) - 1)]
        self.calls.append(host)
        return answer


@asynccontextmanager
async def make_loader(
    transport: httpx.AsyncBaseTransport | None = None,
    resolver: FakeDNS | None = None,
    **config: Any,
) -> AsyncIterator[MediaLoader]:
    client = httpx.AsyncClient(transport=transport) if transport is not None else None
    loader = MediaLoader(MediaConfig(**config), client, resolver=resolver)
    try:
        yield loader
    finally:
        await loader.aclose()
        if client is not None:
            await client.aclose()


async def refused(loader: MediaLoader, ref: str) -> ImageRefused:
    with pytest.raises(ImageRefused) as info:
        await loader.load(ref)
    assert isinstance(info.value, MediaError)  # the caller maps MediaError to 4xx
    return info.value


# ---------------------------------------------------------------------------------------------
# data URLs and decoding


@pytest.mark.parametrize(
    ("fmt", "mime", "save"),
    [
        ("PNG", "image/png", {}),
        ("JPEG", "image/jpeg", {"quality": 95}),
        ("WEBP", "image/webp", {"lossless": True}),
        ("GIF", "image/gif", {}),
        ("BMP", "image/bmp", {}),
    ],
)
async def test_valid_data_urls_decode(fmt: str, mime: str, save: dict[str, Any]) -> None:
    async with make_loader() as loader:
        image = await loader.load(data_url(encode(two_colour(), fmt, **save), mime))
    assert isinstance(image, ImageInput)
    assert image.size == (40, 20)
    assert image.image.mode == "RGB"
    red, blue = image.image.getpixel((5, 10)), image.image.getpixel((35, 10))
    assert red[0] > 200 and red[2] < 60, red
    assert blue[2] > 200 and blue[0] < 60, blue


async def test_exif_rotated_jpeg_is_transposed() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display = rotate 90° clockwise
    jpeg = encode(two_colour((40, 20)), "JPEG", exif=exif.tobytes(), quality=95)
    async with make_loader() as loader:
        image = await loader.load(data_url(jpeg, "image/jpeg"))
    assert image.size == (20, 40)
    top, bottom = image.image.getpixel((10, 5)), image.image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, top  # the red left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


@pytest.mark.parametrize(
    "img",
    [
        Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
        Image.new("LA", (8, 8), (0, 0)),
        Image.new("P", (8, 8), 0),
    ],
    ids=["RGBA", "LA", "P+transparency"],
)
async def test_transparency_is_flattened_on_white(img: Image.Image) -> None:
    img = img.copy()
    img.putpixel((0, 0), (255, 0, 0, 255) if img.mode == "RGBA" else img.getpixel((0, 0)))
    save: dict[str, Any] = {"transparency": 0} if img.mode == "P" else {}
    async with make_loader() as loader:
        image = await loader.load(data_url(encode(img, "PNG", **save)))
    assert image.image.mode == "RGB"
    assert image.image.getpixel((4, 4)) == WHITE
    if img.mode == "RGBA":
        assert image.image.getpixel((0, 0)) == RED


async def test_gif_takes_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    async with make_loader() as loader:
        image = await loader.load(data_url(gif, "image/gif"))
    assert image.image.getpixel((8, 8)) == RED


@pytest.mark.parametrize(
    ("size", "fmt", "expected"),
    [
        ((300, 100), "PNG", (64, 21)),
        ((100, 300), "PNG", (21, 64)),
        ((640, 480), "JPEG", (64, 48)),  # JPEG takes the draft (reduced-scale decode) path
        ((64, 10), "PNG", (64, 10)),  # at the limit: untouched
    ],
)
async def test_large_images_are_downscaled_keeping_aspect(
    size: tuple[int, int], fmt: str, expected: tuple[int, int]
) -> None:
    async with make_loader(max_side=64) as loader:
        image = await loader.load(data_url(encode(two_colour(size), fmt), f"image/{fmt.lower()}"))
    assert image.size == expected


@pytest.mark.parametrize(
    ("ref", "reason", "message"),
    [
        ("data:image/png;base64,@@@@", "invalid_base64", "invalid base64"),
        ("data:image/png;base64,iVBORw0KGgo", "invalid_base64", "invalid base64"),  # padding
        ("data:image/png;base64,iVBO Rw0K", "invalid_base64", "invalid base64"),
        ("data:image/png," + "%89PNG", "invalid_data_url", "only base64 data URLs"),
        ("data:image/png;base64", "invalid_data_url", "malformed data URL"),
        (data_url(PNG, "image/svg+xml"), "unsupported_format", "supported: image/png"),
        (data_url(PNG, "text/plain"), "unsupported_format", "unsupported data URL type"),
        (data_url(b"hello, I am not an image at all"), "not_an_image", "not a supported image"),
        (data_url(b""), "not_an_image", "empty"),
        (
            data_url(encode(two_colour(), "TIFF")),
            "unsupported_format",
            r"unsupported image format TIFF \(supported: PNG, JPEG, WebP, GIF, BMP\)",
        ),
        (
            data_url(b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>'),
            "unsupported_format",
            "SVG",
        ),
        (data_url(noise_png()[:2000]), "decode_failed", "cannot decode image: truncated PNG"),
        (data_url(png_header_only(20000, 20000)), "too_many_pixels", "too large"),
        (data_url(png_header_only(10000, 10000)), "too_many_pixels", "too large"),  # PIL warns
        (data_url(png_header_only(8000, 6000)), "too_many_pixels", r"8000x6000 = 48000000"),
        ("", "invalid_url", "empty image reference"),
    ],
)
async def test_bad_images_are_clear_media_errors(ref: str, reason: str, message: str) -> None:
    async with make_loader() as loader:
        err = await refused(loader, ref)
    assert err.reason == reason
    assert err.param == reason
    assert err.index is None
    assert re.search(message, err.message), err.message


async def test_pixel_cap_comes_from_config_and_is_checked_before_decoding() -> None:
    async with make_loader(max_pixels=1000) as loader:
        err = await refused(loader, data_url(encode(two_colour((40, 40)), "PNG")))
        assert err.message == "image is too large: 40x40 = 1600 pixels (limit 1000 pixels)"
        # a header-only PNG would fail to decode: a pixel refusal proves nothing was decoded
        err = await refused(loader, data_url(png_header_only(100, 100)))
        assert err.reason == "too_many_pixels"
        assert (await loader.load(data_url(encode(two_colour((25, 40)), "PNG")))).size == (25, 40)


async def test_a_raised_max_pixels_is_honoured_by_pil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # restored after the test
    async with make_loader(max_pixels=5000) as loader:
        assert Image.MAX_IMAGE_PIXELS == 5000
        image = await loader.load(data_url(encode(two_colour((60, 60)), "PNG")))
        assert image.size == (60, 60)
        err = await refused(loader, data_url(encode(two_colour((80, 80)), "PNG")))  # 6400
        assert err.reason == "too_many_pixels"


async def test_oversize_data_url_is_refused_from_its_encoded_length() -> None:
    async with make_loader(max_image_bytes=1024) as loader:
        # not even valid base64: a size refusal proves the size was checked before decoding
        err = await refused(loader, "data:image/png;base64," + "@" * 1400)
        assert err.reason == "too_large"
        assert "limit 1024 bytes" in err.message
        err = await refused(loader, data_url(noise_png((32, 32))))
        assert err.reason == "too_large"


async def test_load_bytes_decodes_uploads_and_enforces_the_byte_cap() -> None:
    async with make_loader(max_image_bytes=4096) as loader:
        image = await loader.load_bytes(PNG)
        assert image.size == (40, 20)
        with pytest.raises(ImageRefused, match=r"^photo\.png: image is too large") as info:
            await loader.load_bytes(noise_png((64, 64)), source="photo.png")
        assert info.value.reason == "too_large"
        with pytest.raises(ImageRefused, match="not a supported image"):
            await loader.load_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")  # EPS decoder is never tried


async def test_load_all_keeps_order_and_names_the_failing_image() -> None:
    red = data_url(encode(Image.new("RGB", (4, 4), RED), "PNG"))
    blue = data_url(encode(Image.new("RGB", (6, 6), BLUE), "PNG"))
    async with make_loader() as loader:
        images = await loader.load_all([red, blue, red])
        assert [i.size for i in images] == [(4, 4), (6, 6), (4, 4)]
        assert images[0].sha256 == images[2].sha256 != images[1].sha256
        assert await loader.load_all([]) == []
        with pytest.raises(ImageRefused) as info:
            await loader.load_all([red, "data:image/png;base64,@@@@", blue])
    assert info.value.index == 1
    assert info.value.reason == "invalid_base64"
    assert info.value.message.startswith("image 2 of 3: invalid base64")


def test_one_loader_serves_several_event_loops() -> None:
    """E.g. a CLI or a test suite that runs ``asyncio.run`` more than once with one loader."""
    loader = MediaLoader(MediaConfig(), decode_concurrency=1)  # 1 slot: decodes must queue
    refs = [data_url(PNG)] * 3
    for _ in range(2):
        assert len(asyncio.run(loader.load_all(refs))) == 3
    asyncio.run(loader.aclose())


async def test_too_many_images_is_refused_before_any_work() -> None:
    transport, dns = NoNetwork(), FakeDNS({})
    async with make_loader(transport, dns, max_images=2) as loader:
        with pytest.raises(ImageRefused, match="too many images: 3 given, at most 2") as info:
            await loader.load_all(["http://93.184.216.34/a.png"] * 3)
    assert info.value.reason == "too_many_images"
    assert transport.requests == [] and dns.calls == []


# ---------------------------------------------------------------------------------------------
# URL policy: schemes and SSRF (nothing may be sent anywhere)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("ftp://example.com/x.png", "unsupported URL scheme 'ftp'"),
        ("gopher://example.com:70/_x", "unsupported URL scheme 'gopher'"),
        ("javascript:alert(1)", "unsupported URL scheme 'javascript'"),
        ("example.com/x.png", "must start with http://, https:// or data:"),
        ("//example.com/x.png", "must start with http://, https:// or data:"),
        ("http://user:pw@example.com/x.png", "credentials"),
        ("http:///x.png", "no host"),
    ],
)
async def test_non_http_urls_are_refused(ref: str, message: str) -> None:
    transport, dns = NoNetwork(), FakeDNS({})
    async with make_loader(transport, dns) as loader:
        err = await refused(loader, ref)
    assert message in err.message
    assert transport.requests == [] and dns.calls == []


async def test_remote_fetching_can_be_disabled() -> None:
    transport = NoNetwork()
    async with make_loader(transport, allow_remote=False) as loader:
        err = await refused(loader, "https://93.184.216.34/cat.png")
        assert err.reason == "remote_disabled"
        assert (await loader.load(data_url(PNG))).size == (40, 20)  # data URLs still work
    assert transport.requests == []


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("http://127.0.0.1/x.png", "address 127.0.0.1 is not allowed (loopback"),
        ("http://10.0.0.1/", "address 10.0.0.1 is not allowed (private"),
        ("http://172.16.5.4:8080/a", "(private"),
        ("http://192.168.0.1/", "(private"),
        ("http://169.254.169.254/latest/meta-data", "(link-local"),
        ("http://100.64.1.1/", "(shared (CGNAT)"),
        ("http://[::1]/", "address ::1 is not allowed (loopback"),
        ("http://[::ffff:127.0.0.1]/", "(IPv4-mapped loopback"),
        ("http://[::ffff:a9fe:a9fe]/", "(IPv4-mapped link-local"),
        ("http://[fe80::1]/", "(link-local"),
        ("http://[fd00::1]/", "(unique-local"),
        ("http://0.0.0.0/", "address 0.0.0.0 is not allowed (unspecified"),
        ("http://[::]/", "(unspecified"),
        ("http://224.0.0.1/", "(multicast"),
        ("https://127.0.0.1:8443/x.png", "(loopback"),
    ],
)
async def test_blocked_ip_literals_are_refused_before_any_connection(
    ref: str, message: str
) -> None:
    transport, dns = NoNetwork(), FakeDNS({})
    async with make_loader(transport, dns) as loader:
        err = await refused(loader, ref)
    assert message in err.message, err.message
    assert err.reason == "blocked_address"
    assert transport.requests == []  # refused BEFORE any connection attempt
    assert dns.calls == []  # IP literals are never resolved


@pytest.mark.parametrize(
    "ref",
    ["http://2130706433/x.png", "http://0x7f000001/x.png", "http://127.1/x.png"],
)
async def test_obfuscated_loopback_forms_are_refused(ref: str) -> None:
    host = httpx.URL(ref).host
    try:  # numeric parsing only: never a DNS query off this machine
        socket.getaddrinfo(host, 80, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pytest.skip(f"this platform's getaddrinfo does not parse {host!r} as a number")
    transport = NoNetwork()
    async with make_loader(transport) as loader:  # the system resolver normalises these
        err = await refused(loader, ref)
    assert err.reason in ("blocked_address", "dns_failed")
    assert transport.requests == []


async def test_a_name_resolving_to_loopback_is_refused() -> None:
    transport = NoNetwork()
    async with make_loader(transport) as loader:  # the real resolver; /etc/hosts: localhost
        err = await refused(loader, "http://localhost/x.png")
    assert err.message == "host 'localhost' is not allowed: it resolves to a non-public address"
    assert transport.requests == []


@pytest.mark.parametrize(
    "answer",
    [["10.0.0.1"], ["93.184.216.34", "127.0.0.1"], ["::ffff:169.254.169.254"], ["fd00::5"]],
)
async def test_names_resolving_to_blocked_addresses_are_refused(answer: list[str]) -> None:
    transport, dns = NoNetwork(), FakeDNS({"images.example": [answer]})
    async with make_loader(transport, dns) as loader:
        err = await refused(loader, "https://images.example/cat.png")
    assert err.reason == "blocked_address"
    assert transport.requests == []


class ImageServerDouble:
    """A MockTransport handler: answers with PNG, records each request."""

    def __init__(self, body: bytes = PNG) -> None:
        self.body = body
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, content=self.body, headers={"Content-Type": "image/png"})


async def test_connection_is_pinned_to_the_checked_address() -> None:
    """DNS rebinding: the second answer is loopback, but no second lookup ever happens."""
    server = ImageServerDouble()
    dns = FakeDNS({"images.example": [["93.184.216.34"], ["127.0.0.1"]]})
    async with make_loader(httpx.MockTransport(server), dns) as loader:
        image = await loader.load("https://images.example:8443/cat.png?x=1")
    assert image.size == (40, 20)
    assert dns.calls == ["images.example"]
    (request,) = server.requests
    assert str(request.url) == "https://93.184.216.34:8443/cat.png?x=1"
    assert request.headers["Host"] == "images.example:8443"
    assert request.extensions["sni_hostname"] == "images.example"
    assert request.headers["Connection"] == "close"  # never reuse a TLS connection across names
    assert request.headers["Accept-Encoding"] == "identity"


async def test_shared_client_credentials_never_reach_user_urls() -> None:
    server = ImageServerDouble()
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(server),
        headers={"Authorization": "Bearer upstream-secret"},
        cookies={"session": "s3cret"},
        auth=("api", "key"),
    )
    loader = MediaLoader(MediaConfig(), client)
    try:
        await loader.load("http://93.184.216.34/cat.png")
    finally:
        await loader.aclose()
        assert not client.is_closed  # a caller's client is the caller's to close
        await client.aclose()
    (request,) = server.requests
    assert "Authorization" not in request.headers
    assert "Cookie" not in request.headers


async def test_connect_failure_falls_back_to_the_next_checked_address() -> None:
    server = ImageServerDouble()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "2606:2800:220:1::1":
            raise httpx.ConnectError("no IPv6 route", request=request)
        return server(request)

    dns = FakeDNS({"images.example": [["2606:2800:220:1::1", "93.184.216.34"]]})
    async with make_loader(httpx.MockTransport(handler), dns) as loader:
        await loader.load("http://images.example/cat.png")
    assert [r.url.host for r in server.requests] == ["93.184.216.34"]


class Chunks(httpx.AsyncByteStream):
    """A response body that records how much of it was read."""

    def __init__(self, chunk: bytes, count: int) -> None:
        self.chunk, self.count, self.sent = chunk, count, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.sent += 1
            yield self.chunk


@pytest.mark.parametrize("content_length", ["100", None], ids=["lying", "missing"])
async def test_byte_cap_is_enforced_while_streaming(content_length: str | None) -> None:
    body = Chunks(b"\x00" * 1024, count=1000)
    headers = {"Content-Length": content_length} if content_length else {}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, stream=body)

    async with make_loader(httpx.MockTransport(handler), max_image_bytes=8 * 1024) as loader:
        err = await refused(loader, "http://93.184.216.34/big.png")
    assert err.reason == "too_large"
    assert "more than 8192 bytes" in err.message
    assert body.sent == 9  # stopped at the first chunk past the cap, not after 1000


async def test_declared_oversize_is_refused_without_reading_the_body() -> None:
    body = Chunks(b"\x00" * 1024, count=100)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": "102400"}, stream=body)

    async with make_loader(httpx.MockTransport(handler), max_image_bytes=8 * 1024) as loader:
        err = await refused(loader, "http://93.184.216.34/big.png")
    assert "102400 bytes (limit 8192 bytes)" in err.message
    assert body.sent == 0


# ---------------------------------------------------------------------------------------------
# real fetches through a real loopback HTTP server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits: ClassVar[list[tuple[str, str, str]]]  # (server address, path, Host header)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}) and "Transfer-Encoding" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.hits.append((self.server.server_address[0], url.path, self.headers.get("Host", "")))
        try:
            self.route(url.path, query)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def route(self, path: str, query: dict[str, str]) -> None:
        if path == "/img.png":
            time.sleep(float(query.get("delay", "0")))
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif path == "/redirect":
            self._send(int(query.get("code", "302")), headers={"Location": query["to"]})
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            if left == 0:
                self._send(200, PNG, {"Content-Type": "image/png"})
            else:
                self._send(302, headers={"Location": f"/chain/{left - 1}"})  # relative
        elif path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(256):  # 2 MB in 8 KB chunks unless the client hangs up
                self.wfile.write(b"2000\r\n" + b"\x00" * 0x2000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/big-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            for _ in range(256):
                self.wfile.write(b"\x00" * 0x2000)
        elif path == "/slow":
            time.sleep(3)
            self._send(200, PNG)
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):  # each byte well within a per-read timeout; the whole: 5 s
                self.wfile.write(b"\x00")
                self.wfile.flush()
                time.sleep(0.05)
        elif path == "/page.html":
            self._send(
                200, b"<html><body>not an image</body></html>", {"Content-Type": "text/html"}
            )
        elif path == "/gzip":
            self._send(200, zlib.compress(PNG), {"Content-Encoding": "gzip"})
        else:
            self._send(404, b"not found", {"Content-Type": "text/plain"})


class LoopbackServer:
    def __init__(
        self, host: str, hits: list[tuple[str, str, str]], tls: ssl.SSLContext | None = None
    ) -> None:
        handler = type("BoundHandler", (Handler,), {"hits": hits})
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.host, self.port = host, self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def hits() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture(scope="module")
def server(hits: list[tuple[str, str, str]]) -> Iterator[LoopbackServer]:
    srv = LoopbackServer("127.0.0.1", hits)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def other_server(hits: list[tuple[str, str, str]]) -> Iterator[LoopbackServer]:
    """A second loopback server on 127.0.0.2: NOT allow-listed; must never be reached."""
    srv = LoopbackServer("127.0.0.2", hits)
    yield srv
    srv.close()


@pytest.fixture
def fresh_hits(hits: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    hits.clear()
    return hits


async def test_real_fetch_succeeds_when_allow_listed(
    server: LoopbackServer, fresh_hits: list[tuple[str, str, str]]
) -> None:
    transport = LoopbackOnly()
    async with make_loader(transport, allow_hosts=["127.0.0.1"]) as loader:
        image = await loader.load(server.url("/img.png"))
    assert image.size == (40, 20)
    assert fresh_hits == [("127.0.0.1", "/img.png", f"127.0.0.1:{server.port}")]


async def test_real_fetch_by_name_connects_to_the_checked_address(
    server: LoopbackServer, fresh_hits: list[tuple[str, str, str]]
) -> None:
    transport = LoopbackOnly()
    async with make_loader(transport, allow_hosts=["localhost"]) as loader:
        await loader.load(server.url("/img.png", host="localhost"))
    assert [str(r.url.host) for r in transport.requests] == ["127.0.0.1"]
    assert fresh_hits == [("127.0.0.1", "/img.png", f"localhost:{server.port}")]


async def test_loopback_is_refused_without_allow_list(
    server: LoopbackServer, fresh_hits: list[tuple[str, str, str]]
) -> None:
    async with make_loader(LoopbackOnly()) as loader:
        err = await refused(loader, server.url("/img.png"))
    assert err.reason == "blocked_address"
    assert fresh_hits == []


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("http://10.0.0.1/x.png", "address 10.0.0.1 is not allowed (private"),
        ("http://169.254.169.254/latest/meta-data", "address 169.254.169.254 is not allowed"),
        ("http://[::ffff:169.254.169.254]/", "IPv4-mapped link-local"),
        ("http://[::1]/x.png", "address ::1 is not allowed (loopback"),
        ("http://0.0.0.0:80/", "address 0.0.0.0 is not allowed (unspecified"),
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
    ],
)
@pytest.mark.parametrize("code", ["302", "307"])
async def test_redirect_to_a_blocked_target_is_refused_on_the_hop(
    server: LoopbackServer,
    fresh_hits: list[tuple[str, str, str]],
    target: str,
    code: str,
    message: str,
) -> None:
    transport = LoopbackOnly()  # raises if anything tried to connect outside 127/8
    async with make_loader(transport, allow_hosts=["127.0.0.1"]) as loader:
        ref = str(httpx.URL(server.url("/redirect"), params={"to": target, "code": code}))
        err = await refused(loader, ref)
    assert message in err.message, err.message
    assert len(transport.requests) == 1  # only the allowed first hop was ever sent
    assert [h[1] for h in fresh_hits] == ["/redirect"]


async def test_redirect_to_another_loopback_address_is_refused(
    server: LoopbackServer, other_server: LoopbackServer, fresh_hits: list[tuple[str, str, str]]
) -> None:
    """``localhost`` is allowed by name; 127.0.0.2 is not, though it is loopback too."""
    transport = LoopbackOnly()
    target = other_server.url("/img.png")
    async with make_loader(transport, allow_hosts=["localhost"]) as loader:
        first = str(httpx.URL(server.url("/redirect", host="localhost"), params={"to": target}))
        err = await refused(loader, first)
        assert err.message == "address 127.0.0.2 is not allowed (loopback addresses are blocked)"
        assert (await refused(loader, target)).reason == "blocked_address"  # directly, too
    assert [h[0] for h in fresh_hits] == ["127.0.0.1"]  # 127.0.0.2 was never contacted


@pytest.mark.parametrize(("length", "ok"), [(0, True), (3, True), (4, False), (9, False)])
async def test_redirects_are_followed_up_to_the_limit(
    server: LoopbackServer, fresh_hits: list[tuple[str, str, str]], length: int, ok: bool
) -> None:
    async with make_loader(LoopbackOnly(), allow_hosts=["127.0.0.1"], max_redirects=3) as loader:
        if ok:
            assert (await loader.load(server.url(f"/chain/{length}"))).size == (40, 20)
        else:
            err = await refused(loader, server.url(f"/chain/{length}"))
            assert err.reason == "too_many_redirects"
            assert err.message == "too many redirects fetching the image (more than 3)"
    assert len(fresh_hits) == min(length, 3) + 1  # the hop past the limit is never requested


async def test_redirects_off(server: LoopbackServer, fresh_hits: list[Any]) -> None:
    async with make_loader(LoopbackOnly(), allow_hosts=["127.0.0.1"], max_redirects=0) as loader:
        err = await refused(loader, server.url("/chain/1"))
    assert err.reason == "too_many_redirects"
    assert len(fresh_hits) == 1


@pytest.mark.parametrize("path", ["/big-chunked", "/big-close"])
async def test_byte_cap_exceeded_mid_stream_without_content_length(
    server: LoopbackServer, path: str
) -> None:
    async with make_loader(
        LoopbackOnly(), allow_hosts=["127.0.0.1"], max_image_bytes=64 * 1024
    ) as loader:
        err = await refused(loader, server.url(path))
    assert err.reason == "too_large"
    assert "more than 65536 bytes" in err.message


@pytest.mark.parametrize("path", ["/slow", "/drip"])
async def test_slow_server_times_out(server: LoopbackServer, path: str) -> None:
    """``/drip`` sends a byte every 50 ms: only a deadline for the whole fetch stops it."""
    started = time.monotonic()
    async with make_loader(LoopbackOnly(), allow_hosts=["127.0.0.1"], fetch_timeout_s=0.4) as ld:
        err = await refused(ld, server.url(path))
    assert err.reason == "fetch_timeout"
    assert "timed out after 0.4 s" in err.message
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("path", "reason", "message"),
    [
        ("/missing.png", "fetch_failed", "the server answered HTTP 404 Not Found"),
        ("/page.html", "not_an_image", "cannot decode image: not a supported image"),
        ("/gzip", "fetch_failed", "images must be served uncompressed"),
    ],
)
async def test_http_failures_are_clear_errors(
    server: LoopbackServer, path: str, reason: str, message: str
) -> None:
    async with make_loader(LoopbackOnly(), allow_hosts=["127.0.0.1"]) as loader:
        err = await refused(loader, server.url(path))
    assert err.reason == reason
    assert message in err.message, err.message


async def test_connection_refused_is_a_clear_error() -> None:
    with socket.socket() as sock:  # a port bound but not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        async with make_loader(LoopbackOnly(), allow_hosts=["127.0.0.1"]) as loader:
            err = await refused(loader, f"http://127.0.0.1:{port}/x.png")
    assert err.reason == "fetch_failed"
    assert "cannot connect to '127.0.0.1'" in err.message


async def test_images_load_concurrently(server: LoopbackServer) -> None:
    refs = [server.url("/img.png?delay=0.4") for _ in range(4)]
    async with make_loader(LoopbackOnly(), allow_hosts=["127.0.0.1"]) as loader:
        started = time.monotonic()
        images = await loader.load_all([*refs, data_url(PNG)])
        elapsed = time.monotonic() - started
    assert len(images) == 5
    assert elapsed < 1.2, elapsed  # 4 x 0.4 s in sequence would be 1.6 s


async def test_first_failure_cancels_the_other_fetches(server: LoopbackServer) -> None:
    async with make_loader(LoopbackOnly(), allow_hosts=["127.0.0.1"]) as loader:
        started = time.monotonic()
        with pytest.raises(ImageRefused) as info:
            await loader.load_all([server.url("/slow"), "javascript:alert(1)"])
        assert time.monotonic() - started < 1.0  # did not wait for the 3 s server
    assert info.value.index == 1
    assert info.value.message.startswith("image 2 of 2: unsupported URL scheme")


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A throw-away self-signed certificate for the name ``images.test`` (made with openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test", "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_server(
    tls_cert: tuple[str, str], hits: list[tuple[str, str, str]]
) -> Iterator[LoopbackServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_cert)
    srv = LoopbackServer("127.0.0.1", hits, tls=context)
    yield srv
    srv.close()


@pytest.mark.parametrize(("name", "ok"), [("images.test", True), ("other.test", False)])
async def test_https_pinned_to_the_ip_still_verifies_the_certificate_for_the_name(
    tls_cert: tuple[str, str],
    tls_server: LoopbackServer,
    fresh_hits: list[tuple[str, str, str]],
    name: str,
    ok: bool,
) -> None:
    """Connects to 127.0.0.1 (the checked address) with SNI and verification for ``name``."""
    trust = ssl.create_default_context(cafile=tls_cert[0])
    transport = LoopbackOnly(verify=trust)
    dns = FakeDNS({name: [["127.0.0.1"]]})
    url = f"https://{name}:{tls_server.port}/img.png"
    async with make_loader(transport, dns, allow_hosts=[name]) as loader:
        if ok:
            assert (await loader.load(url)).size == (40, 20)
            assert fresh_hits == [("127.0.0.1", "/img.png", f"{name}:{tls_server.port}")]
        else:  # the certificate is for images.test: a pinned request for other.test must fail
            err = await refused(loader, url)
            assert err.reason == "fetch_failed"
            assert "CERTIFICATE_VERIFY_FAILED" in err.message, err.message
            assert fresh_hits == []
    assert [str(r.url.host) for r in transport.requests] == ["127.0.0.1"]
