"""Media ingress: the only code that turns user-supplied image references into decoded images.

    ref ──┬─ data:image/<png|jpeg|webp|gif|bmp>;base64,...  size checked from the encoded length,
          │                                                  then strict base64
          ├─ http(s)://...  scheme check ─ NetGuard.check (resolve + address policy, every hop)
          │                 ─ GET pinned to the checked address ─ manual redirects ─ streamed
          │                 byte cap ─ one deadline for the whole fetch
          └─ load_bytes(...) (multipart uploads)              size checked
                                    │
             decode in a worker thread (bounded): header-only open, pixel cap BEFORE decoding,
             load (truncated/corrupt -> MediaError), EXIF transpose, RGB (alpha on white),
             first frame only, downscale to max_side  ->  ImageInput

Every refusal is a ``models.errors.MediaError`` (an InvalidRequest: 4xx, never a 500). The loader
raises ``ImageRefused`` (a MediaError) whose ``reason`` is a short code (also put in ``param``,
which the HTTP layer may replace with the JSON path of the part) and whose ``index`` is the 0-based
position in ``load_all``'s refs; the message then starts ``image 2 of 3: ...`` (1-based).

SSRF and connection pinning. Each hop's host is resolved and checked by ``app.netguard`` BEFORE
any connection, and the request is sent to the checked IP address itself (URL host replaced by the
IP; ``Host`` header = the original host; for https the ``sni_hostname`` request extension carries
the original name, which httpcore uses for SNI and certificate verification). There is no second
DNS lookup between check and connect, so DNS rebinding cannot slip another address in. https
requests send ``Connection: close``: the connection pool is keyed by IP, so a TLS connection
verified for one name is never reused for another name that shares the IP. Redirects are followed
by hand (never by httpx), each ``Location`` resolved against the logical URL and checked like the
first URL. Requests are built directly (not with ``client.build_request``), and sent with
``auth=None``: a shared client's default headers, cookies and credentials never leak to
user-chosen URLs. A client the loader creates itself ignores proxy environment variables and
stores no cookies.

Residual risks (documented, accepted): an injected client with a proxy configured sends the
pinned IP URL through that proxy, which then makes the connection; the address policy still
applies to the IP, but the proxy's own egress rules are outside our control. DNS is the system
resolver's: ``/etc/hosts`` entries and search domains apply. A DNS lookup cannot be cancelled: the
fetch deadline covers it, but a hung lookup keeps one of netguard's DNS threads until the resolver
gives up.

Decompression bombs: PIL's ``Image.open`` reads only the header, so ``width * height`` is checked
against ``max_pixels`` before a single pixel is decoded. PIL's own guard stays on: creating a
loader raises ``PIL.Image.MAX_IMAGE_PIXELS`` to at least ``max_pixels`` (never lowers it, so PIL
never refuses an image the config accepts) and turns PIL's ``DecompressionBombWarning`` into an
error for the process (once); both PIL outcomes are mapped to MediaError. Only the PNG, JPEG,
WebP, GIF and BMP decoders are ever tried on user bytes (``Image.open(formats=...)``), which keeps
PIL's riskier plugins (EPS via Ghostscript, ...) out of reach.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import os
import struct
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from app.netguard import IPAddress, NetGuard, Resolver
from app.settings import MediaConfig
from models.errors import MediaError
from models.types import ImageInput

logger = logging.getLogger(__name__)

#: PIL format names of the decoders user bytes may reach
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_SUPPORTED_TEXT = "PNG, JPEG, WebP, GIF, BMP"
#: data-URL media types accepted (``image/jpg`` is a common misspelling of ``image/jpeg``)
DATA_URL_TYPES: frozenset[str] = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp"}
)
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "proreason-media/0.1"
_WHITE = (255, 255, 255)


class ImageRefused(MediaError):
    """A MediaError that says why (``reason``, also in ``param``) and which image (``index``)."""

    def __init__(self, message: str, *, reason: str, index: int | None = None) -> None:
        super().__init__(message, param=reason)
        self.reason = reason
        self.index = index


def _refuse(message: str, reason: str) -> ImageRefused:
    return ImageRefused(message, reason=reason)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# PIL set-up (process-wide, idempotent)

_pil_lock = threading.Lock()
_pil_warning_is_error = False


def _configure_pil(max_pixels: int) -> None:
    """Keep PIL's bomb guard on, never stricter than the config, and make its warning an error."""
    global _pil_warning_is_error
    with _pil_lock:
        current = Image.MAX_IMAGE_PIXELS
        if current is None or current < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels
        if not _pil_warning_is_error:
            warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
            _pil_warning_is_error = True


# --------------------------------------------------------------------------------------------
# Decoding (synchronous; runs in a worker thread)

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"%PDF", 0, "PDF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"8BPS", 0, "PSD"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
)


def _not_an_image(data: bytes) -> ImageRefused:
    for magic, offset, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return _refuse(
                f"unsupported image format {name} (supported: {_SUPPORTED_TEXT})",
                "unsupported_format",
            )
    head = data[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return _refuse(
            f"unsupported image format SVG (supported: {_SUPPORTED_TEXT})", "unsupported_format"
        )
    return _refuse(
        f"cannot decode image: not a supported image (supported formats: {_SUPPORTED_TEXT})",
        "not_an_image",
    )


def _too_many_pixels(width: int, height: int, max_pixels: int) -> ImageRefused:
    return _refuse(
        f"image is too large: {width}x{height} = {width * height} pixels "
        f"(limit {max_pixels} pixels)",
        "too_many_pixels",
    )


def _flatten_to_rgb(img: Image.Image) -> Image.Image:
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def _exif_transpose(img: Image.Image) -> Image.Image:
    try:
        transposed = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError) as exc:
        # A broken EXIF block does not make the pixels unusable: keep them as stored.
        logger.info("media: ignoring unreadable EXIF orientation: %s", exc)
        return img.copy()
    return transposed if transposed is not None else img.copy()


def decode_image(data: bytes, *, max_pixels: int, max_side: int) -> Image.Image:
    """Bytes -> a normalised RGB image (longest side <= max_side), or ImageRefused.

    The pixel count is checked from the header before anything is decoded.
    """
    if not data:
        raise _refuse("cannot decode image: the image is empty", "not_an_image")
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise _not_an_image(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _refuse(f"image is too large: {exc}", "too_many_pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise _refuse(f"cannot decode image: {exc}", "decode_failed") from None

    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise _refuse("cannot decode image: it has no pixels", "decode_failed")
        if width * height > max_pixels:
            raise _too_many_pixels(width, height, max_pixels)
        fmt = img.format or "image"
        try:
            if fmt == "JPEG" and max(width, height) > max_side:
                # JPEG can decode at 1/2, 1/4, 1/8 scale: much less memory and CPU for big photos
                img.draft("RGB", (max_side, max_side))
            img.load()  # first frame only for animations (GIF, WebP)
            out = _exif_transpose(img)
            out = _flatten_to_rgb(out)
            if max(out.size) > max_side:
                out.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _refuse(f"image is too large: {exc}", "too_many_pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError) as exc:
            # (struct.error / IndexError: decoder faults on hostile input, not our bugs)
            detail = str(exc) or type(exc).__name__
            if "truncated" in detail or isinstance(exc, EOFError):
                raise _refuse(
                    f"cannot decode image: truncated {fmt} ({detail})", "decode_failed"
                ) from None
            raise _refuse(
                f"cannot decode image: corrupt {fmt} ({detail})", "decode_failed"
            ) from None
    return out  # always a new image: exif_transpose copies, so closing ``img`` is safe


# --------------------------------------------------------------------------------------------
# data: URLs and http(s) URLs


def decode_data_url(ref: str, max_bytes: int) -> bytes:
    """``data:image/png;base64,...`` -> bytes; size checked from the encoded length first."""
    header, comma, payload = ref.partition(",")
    if not comma:
        raise _refuse("malformed data URL: no ',' before the data", "invalid_data_url")
    meta = [p.strip().lower() for p in header[len("data:") :].split(";")]
    media_type, params = meta[0], meta[1:]
    if not params or params[-1] != "base64":
        raise _refuse(
            "only base64 data URLs are accepted (data:image/png;base64,...)", "invalid_data_url"
        )
    if media_type not in DATA_URL_TYPES:
        raise _refuse(
            f"unsupported data URL type {_short(media_type, 40)!r} "
            "(supported: image/png, image/jpeg, image/webp, image/gif, image/bmp)",
            "unsupported_format",
        )
    payload = payload.strip()
    decoded_size = (len(payload) // 4) * 3 - payload[-2:].count("=")
    if decoded_size > max_bytes:
        raise _refuse(
            f"image is too large: about {decoded_size} bytes (limit {max_bytes} bytes)",
            "too_large",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refuse(f"invalid base64 in data URL: {exc}", "invalid_base64") from None
    if len(data) > max_bytes:  # cannot happen given the estimate; kept as the real check
        raise _refuse(
            f"image is too large: {len(data)} bytes (limit {max_bytes} bytes)", "too_large"
        )
    return data


def parse_http_url(ref: str) -> httpx.URL:
    """An http(s) URL with a host and no credentials, or ImageRefused."""
    try:
        url = httpx.URL(ref)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise _refuse(f"invalid image URL: {exc}", "invalid_url") from None
    scheme = url.scheme.lower()
    if scheme not in ("http", "https"):
        if not scheme:
            msg = "image URL must start with http://, https:// or data:"
        else:
            msg = (
                f"unsupported URL scheme {_short(scheme, 20)!r} "
                "(only http, https and data: URLs are accepted)"
            )
        raise _refuse(msg, "unsupported_scheme")
    if not url.raw_host:
        raise _refuse("invalid image URL: no host", "invalid_url")
    if url.userinfo:
        raise _refuse(
            "image URLs with credentials (user:password@) are not accepted", "invalid_url"
        )
    return url


@dataclass(frozen=True)
class _Redirect:
    location: httpx.URL


# --------------------------------------------------------------------------------------------
# The loader


class MediaLoader:
    """Loads user-supplied images (data URLs, http(s) URLs, uploaded bytes) safely.

    ``client``: an httpx client to fetch with (e.g. a shared one, or one with a MockTransport in
    tests); when None the loader creates and owns one. ``resolver``: DNS for the SSRF guard
    (default: the system's ``getaddrinfo`` in a worker thread).
    """

    def __init__(
        self,
        config: MediaConfig,
        client: httpx.AsyncClient | None = None,
        *,
        resolver: Resolver | None = None,
        decode_concurrency: int | None = None,
    ) -> None:
        self.config = config
        self._guard = NetGuard(config.allow_hosts, resolver)
        self._owns_client = client is None
        self._client = client if client is not None else self._make_client(config)
        #: images decoded at once (each may hold up to max_pixels x 4 bytes while decoding)
        self.decode_concurrency = decode_concurrency or max(1, min(4, os.cpu_count() or 1))
        self._decode_slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        _configure_pil(config.max_pixels)

    @staticmethod
    def _make_client(config: MediaConfig) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(config.fetch_timeout_s),
            follow_redirects=False,
            trust_env=False,  # no proxy / netrc from the environment for user-chosen URLs
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),  # store none
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> MediaLoader:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- public API ---------------------------------------------------------------------------

    async def load_all(self, refs: Sequence[str]) -> list[ImageInput]:
        """Load every ref concurrently, in order. The first refusal cancels the rest."""
        total = len(refs)
        if total > self.config.max_images:
            raise ImageRefused(
                f"too many images: {total} given, at most {self.config.max_images} per request",
                reason="too_many_images",
            )
        if total == 0:
            return []
        tasks = [asyncio.create_task(self.load(ref)) for ref in refs]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for index, task in enumerate(tasks):
            if task.cancelled():
                continue
            exc = task.exception()
            if isinstance(exc, MediaError):
                reason = exc.param or "invalid_image"
                raise ImageRefused(
                    f"image {index + 1} of {total}: {exc.message}", reason=reason, index=index
                ) from exc
            if exc is not None:
                raise exc
        return [task.result() for task in tasks]

    async def load(self, ref: str) -> ImageInput:
        """One data: or http(s) URL -> a decoded, normalised image."""
        if not isinstance(ref, str):
            raise _refuse("image reference must be a string URL", "invalid_url")
        ref = ref.strip()
        if not ref:
            raise _refuse("empty image reference", "invalid_url")
        if ref[:5].lower() == "data:":
            data = decode_data_url(ref, self.config.max_image_bytes)
            return await self._decode(data, "data URL")
        url = parse_http_url(ref)
        if not self.config.allow_remote:
            raise _refuse(
                "fetching images from URLs is disabled on this server; "
                "send the image as a data: URL or upload it",
                "remote_disabled",
            )
        data = await self._fetch(url)
        return await self._decode(data, _short(str(url)))

    async def load_bytes(self, data: bytes, source: str = "upload") -> ImageInput:
        """Uploaded bytes (multipart) -> a decoded, normalised image."""
        limit = self.config.max_image_bytes
        if len(data) > limit:
            msg = f"image is too large: {len(data)} bytes (limit {limit} bytes)"
            raise _refuse(f"{_short(source, 60)}: {msg}", "too_large")
        return await self._decode(bytes(data), source)

    # -- decoding -----------------------------------------------------------------------------

    async def _decode(self, data: bytes, source: str) -> ImageInput:
        async with self._slots():
            image = await asyncio.to_thread(self._decode_sync, data)
        logger.debug("media: decoded %s from %s", image, source)
        return image

    def _slots(self) -> asyncio.Semaphore:
        """The decode semaphore of the running loop (an asyncio primitive binds to one loop)."""
        loop = asyncio.get_running_loop()
        if self._decode_slots is None or self._slots_loop is not loop:
            self._decode_slots = asyncio.Semaphore(self.decode_concurrency)
            self._slots_loop = loop
        return self._decode_slots

    def _decode_sync(self, data: bytes) -> ImageInput:
        img = decode_image(data, max_pixels=self.config.max_pixels, max_side=self.config.max_side)
        return ImageInput(img)

    # -- fetching -----------------------------------------------------------------------------

    async def _fetch(self, url: httpx.URL) -> bytes:
        timeout = self.config.fetch_timeout_s
        shown = _short(str(url))
        try:
            return await asyncio.wait_for(self._fetch_with_redirects(url), timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise _refuse(
                f"fetching {shown} timed out after {timeout:g} s", "fetch_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise _refuse(
                f"fetching {shown} failed: {type(exc).__name__}: {_short(str(exc), 120)}",
                "fetch_failed",
            ) from None

    async def _fetch_with_redirects(self, url: httpx.URL) -> bytes:
        max_redirects = self.config.max_redirects
        for hop in range(max_redirects + 1):
            if hop:
                url = parse_http_url(str(url))  # scheme, host and credentials on every hop
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                addresses = await self._guard.check(url.raw_host.decode("ascii"), port)
            except ImageRefused:
                raise
            except MediaError as exc:  # the guard's refusals carry their reason in ``param``
                reason = exc.param or "blocked_address"
                raise ImageRefused(exc.message, reason=reason) from None
            outcome = await self._get_pinned(url, addresses)
            if isinstance(outcome, bytes):
                return outcome
            logger.debug("media: redirect %s -> %s", url, outcome.location)
            url = outcome.location
        raise _refuse(
            f"too many redirects fetching the image (more than {max_redirects})",
            "too_many_redirects",
        )

    def _pinned_request(self, url: httpx.URL, address: IPAddress) -> httpx.Request:
        host = url.raw_host.decode("ascii")
        headers = {
            "Host": url.netloc.decode("ascii"),
            "Accept": "image/png,image/jpeg,image/webp,image/gif,image/bmp;q=0.9,*/*;q=0.1",
            "Accept-Encoding": "identity",
            "User-Agent": _USER_AGENT,
        }
        extensions: dict[str, object] = {
            "timeout": httpx.Timeout(self.config.fetch_timeout_s).as_dict()
        }
        if url.scheme == "https":
            headers["Connection"] = "close"
            if host != str(address):
                extensions["sni_hostname"] = host
        return httpx.Request(
            "GET", url.copy_with(host=str(address)), headers=headers, extensions=extensions
        )

    async def _get_pinned(self, url: httpx.URL, addresses: list[IPAddress]) -> bytes | _Redirect:
        """GET ``url`` from one of the checked ``addresses`` (next one only if connecting fails)."""
        last_error: httpx.ConnectError | None = None
        for address in addresses:
            request = self._pinned_request(url, address)
            try:
                response = await self._client.send(
                    request, stream=True, follow_redirects=False, auth=None
                )
            except httpx.ConnectError as exc:
                last_error = exc
                continue
            try:
                return await self._read(url, response)
            finally:
                await response.aclose()
        detail = f": {_short(str(last_error), 120)}" if last_error and str(last_error) else ""
        raise _refuse(f"cannot connect to {url.host!r}{detail}", "fetch_failed") from last_error

    async def _read(self, url: httpx.URL, response: httpx.Response) -> bytes | _Redirect:
        status = response.status_code
        shown = _short(str(url))
        if status in _REDIRECT_CODES:
            location = response.headers.get("Location")
            if not location:
                raise _refuse(f"{shown} redirected without a Location", "fetch_failed")
            try:
                return _Redirect(url.join(location.strip()))
            except (httpx.InvalidURL, ValueError) as exc:
                raise _refuse(
                    f"{shown} redirected to an invalid URL: {exc}", "invalid_url"
                ) from None
        if not 200 <= status < 300 or status in (204, 206):
            phrase = response.reason_phrase or ""
            raise _refuse(
                f"fetching {shown} failed: the server answered HTTP {status} {phrase}".rstrip(),
                "fetch_failed",
            )
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _refuse(
                f"{shown} sent a compressed ({_short(encoding, 20)}) response; "
                "images must be served uncompressed",
                "fetch_failed",
            )
        limit = self.config.max_image_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise _refuse(
                f"image at {shown} is too large: {int(declared)} bytes (limit {limit} bytes)",
                "too_large",
            )
        body = bytearray()
        # aiter_bytes == raw bytes here (only identity encoding gets this far); unlike aiter_raw it
        # also serves a body an injected transport already read (e.g. httpx.MockTransport)
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise _refuse(
                    f"image at {shown} is too large: more than {limit} bytes", "too_large"
                )
        return bytes(body)
