"""Media ingress: the only code that turns user-supplied image and video references into bytes.

    ref ──┬─ data:image/<png|jpeg|webp|gif|bmp>;base64,...  size checked from the encoded length,
          │                                                  then strict base64
          ├─ http(s)://...  scheme check ─ NetGuard.check (resolve + address policy, every hop)
          │                 ─ GET pinned to the checked address ─ manual redirects ─ streamed
          │                 byte cap ─ one deadline for the whole fetch
          └─ load_bytes(...) (multipart uploads)              size checked
                                    │
             models.images.ImageDecoder (worker threads, bounded): pixel cap BEFORE decoding,
             EXIF transpose, RGB, max side  ->  ImageInput

A video (``data:video/<mp4|webm|quicktime|x-matroska|x-msvideo>;base64,...``, an http(s) URL, or
an upload) takes the same path with its own byte limit (``media.max_video_bytes``) and is handed
to ``models.video.VideoDecoder`` (container sniffed, resolution and duration checked from the
headers before any frame is decoded, N frames sampled) -> VideoInput. Its refusals are
``VideoRefused`` (code ``invalid_video``); ``param`` is the field it came from.

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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx

from app.netguard import IPAddress, NetGuard, Resolver
from app.settings import MediaConfig
from models.errors import MediaError
from models.images import ImageDecoder, ImageRefused, refuse, short
from models.types import ImageInput, VideoInput
from models.video import SAMPLINGS, Sampling, VideoDecoder, VideoRefused

logger = logging.getLogger(__name__)

#: data-URL media types accepted (``image/jpg`` is a common misspelling of ``image/jpeg``)
DATA_URL_TYPES: frozenset[str] = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp"}
)
#: data-URL media types accepted for videos
VIDEO_DATA_URL_TYPES: frozenset[str] = frozenset(
    {"video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/x-msvideo",
     "video/avi"}
)  # fmt: skip
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "proreason-media/0.1"


@dataclass(frozen=True)
class Kind:
    """What is being loaded: the noun in messages, the error it raises, what a fetch accepts."""

    noun: str
    error: type[ImageRefused] | type[VideoRefused]
    types: frozenset[str]
    types_text: str
    accept: str

    def refuse(self, message: str, reason: str) -> MediaError:
        return self.error(message, reason=reason)


IMAGE = Kind(
    "image",
    ImageRefused,
    DATA_URL_TYPES,
    "image/png, image/jpeg, image/webp, image/gif, image/bmp",
    "image/png,image/jpeg,image/webp,image/gif,image/bmp;q=0.9,*/*;q=0.1",
)
VIDEO = Kind(
    "video",
    VideoRefused,
    VIDEO_DATA_URL_TYPES,
    "video/mp4, video/webm, video/quicktime, video/x-matroska, video/x-msvideo",
    "video/mp4,video/webm,video/quicktime,video/x-matroska;q=0.9,*/*;q=0.1",
)


# --------------------------------------------------------------------------------------------
# data: URLs and http(s) URLs


def decode_data_url(ref: str, max_bytes: int, kind: Kind = IMAGE) -> bytes:
    """``data:image/png;base64,...`` -> bytes; size checked from the encoded length first."""
    header, comma, payload = ref.partition(",")
    if not comma:
        raise kind.refuse("malformed data URL: no ',' before the data", "invalid_data_url")
    meta = [p.strip().lower() for p in header[len("data:") :].split(";")]
    media_type, params = meta[0], meta[1:]
    if not params or params[-1] != "base64":
        example = "data:image/png;base64,..." if kind is IMAGE else "data:video/mp4;base64,..."
        raise kind.refuse(f"only base64 data URLs are accepted ({example})", "invalid_data_url")
    if media_type not in kind.types:
        raise kind.refuse(
            f"unsupported data URL type {short(media_type, 40)!r} "
            f"(supported: {kind.types_text})",
            "unsupported_format",
        )
    payload = payload.strip()
    decoded_size = (len(payload) // 4) * 3 - payload[-2:].count("=")
    if decoded_size > max_bytes:
        raise kind.refuse(
            f"{kind.noun} is too large: about {decoded_size} bytes (limit {max_bytes} bytes)",
            "too_large",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise kind.refuse(f"invalid base64 in data URL: {exc}", "invalid_base64") from None
    if len(data) > max_bytes:  # cannot happen given the estimate; kept as the real check
        raise kind.refuse(
            f"{kind.noun} is too large: {len(data)} bytes (limit {max_bytes} bytes)", "too_large"
        )
    return data


def parse_http_url(ref: str, kind: Kind = IMAGE) -> httpx.URL:
    """An http(s) URL with a host and no credentials, or ImageRefused (VideoRefused)."""
    noun = kind.noun
    try:
        url = httpx.URL(ref)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise kind.refuse(f"invalid {noun} URL: {exc}", "invalid_url") from None
    scheme = url.scheme.lower()
    if scheme not in ("http", "https"):
        if not scheme:
            msg = f"{noun} URL must start with http://, https:// or data:"
        else:
            msg = (
                f"unsupported URL scheme {short(scheme, 20)!r} "
                "(only http, https and data: URLs are accepted)"
            )
        raise kind.refuse(msg, "unsupported_scheme")
    if not url.raw_host:
        raise kind.refuse(f"invalid {noun} URL: no host", "invalid_url")
    if url.userinfo:
        raise kind.refuse(
            f"{noun} URLs with credentials (user:password@) are not accepted", "invalid_url"
        )
    return url


@dataclass(frozen=True)
class Upload:
    """An uploaded image or video file (multipart)."""

    data: bytes
    filename: str


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
        self.decoder = ImageDecoder(
            max_bytes=config.max_image_bytes,
            max_pixels=config.max_pixels,
            max_side=config.max_side,
            concurrency=decode_concurrency,
        )
        self.video_decoder = VideoDecoder(config.video_limits)

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

    def check_count(self, total: int) -> None:
        """The one image-count rule: at most ``max_images`` per request."""
        if total > self.config.max_images:
            raise ImageRefused(
                f"too many images: {total} given, at most {self.config.max_images} per request",
                reason="too_many_images",
            )

    async def load_request(
        self,
        refs: Sequence[str],
        paths: Sequence[str],
        uploads: Sequence[Upload] = (),
        *,
        param: str,
    ) -> list[ImageInput]:
        """A request's images: its URLs (``paths[i]`` is the JSON path of ``refs[i]``), then its
        uploads. The count is checked first (a refusal names ``param``); a refused image names the
        field it came from.
        """
        try:
            self.check_count(len(refs) + len(uploads))
        except MediaError as exc:
            exc.param = param
            raise
        try:
            images = await self.load_all(refs)
        except MediaError as exc:
            index = getattr(exc, "index", None)
            if index is not None and 0 <= index < len(paths):
                exc.param = paths[index]
            raise
        for i, upload in enumerate(uploads):
            try:
                images.append(await self.load_bytes(upload.data, upload.filename))
            except MediaError as exc:
                exc.param = f"files[{i}]"
                raise
        return images

    async def load_all(self, refs: Sequence[str]) -> list[ImageInput]:
        """Load every ref concurrently, in order. The first refusal cancels the rest."""
        total = len(refs)
        self.check_count(total)
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
            raise refuse("image reference must be a string URL", "invalid_url")
        ref = ref.strip()
        if not ref:
            raise refuse("empty image reference", "invalid_url")
        if ref[:5].lower() == "data:":
            data = decode_data_url(ref, self.config.max_image_bytes)
            return await self.decoder.decode(data, "data URL")
        url = parse_http_url(ref)
        if not self.config.allow_remote:
            raise refuse(
                "fetching images from URLs is disabled on this server; "
                "send the image as a data: URL or upload it",
                "remote_disabled",
            )
        data = await self._fetch(url)
        return await self.decoder.decode(data, short(str(url)))

    async def load_bytes(self, data: bytes, source: str = "upload") -> ImageInput:
        """Uploaded bytes (multipart) -> a decoded, normalised image."""
        return await self.decoder.decode(data, source)

    # -- videos ---------------------------------------------------------------------------------

    def video_options(
        self, frames: int | None, sampling: str | None, *, param: str
    ) -> tuple[int, Sampling]:
        """The one frames/sampling rule: defaults from the settings, at most max_video_frames
        (a refusal names ``<param>_frames`` / ``<param>_sampling``)."""
        cfg = self.config
        n = cfg.video_frames if frames is None else frames
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= cfg.max_video_frames:
            raise VideoRefused(
                f"{param}_frames must be an integer from 1 to {cfg.max_video_frames}",
                reason="too_many_frames",
            ).at(f"{param}_frames")
        how = cfg.video_sampling if sampling is None else sampling
        if how not in SAMPLINGS:
            raise VideoRefused(
                f"{param}_sampling must be one of {', '.join(SAMPLINGS)}", reason="invalid_sampling"
            ).at(f"{param}_sampling")
        return n, how  # type: ignore[return-value]

    async def load_video(
        self, source: str | Upload, *, frames: int, sampling: Sampling, param: str
    ) -> VideoInput:
        """A data: or http(s) URL, or an uploaded file -> sampled frames; a refusal names
        ``param``."""
        try:
            if isinstance(source, Upload):
                data, shown = source.data, source.filename
            else:
                data, shown = await self._video_bytes(source)
            return await self.video_decoder.decode(
                data, frames=frames, sampling=sampling, source=shown
            )
        except MediaError as exc:
            if not isinstance(exc, VideoRefused):
                exc = VideoRefused(exc.message, reason=exc.param or "invalid_video")
            message = exc.message if "video" in exc.message[:40] else f"video: {exc.message}"
            raise VideoRefused(message, reason=exc.reason).at(param) from exc

    async def _video_bytes(self, ref: str) -> tuple[bytes, str]:
        if not isinstance(ref, str) or not ref.strip():
            raise VIDEO.refuse("empty video reference", "invalid_url")
        ref = ref.strip()
        if ref[:5].lower() == "data:":
            return decode_data_url(ref, self.config.max_video_bytes, VIDEO), "data URL"
        url = parse_http_url(ref, VIDEO)
        if not self.config.allow_remote:
            raise VIDEO.refuse(
                "fetching videos from URLs is disabled on this server; "
                "send the video as a data: URL or upload it",
                "remote_disabled",
            )
        return await self._fetch(url, VIDEO), short(str(url))

    # -- fetching -----------------------------------------------------------------------------

    async def _fetch(self, url: httpx.URL, kind: Kind = IMAGE) -> bytes:
        timeout = self.config.fetch_timeout_s
        shown = short(str(url))
        try:
            return await asyncio.wait_for(self._fetch_with_redirects(url, kind), timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise kind.refuse(
                f"fetching {shown} timed out after {timeout:g} s", "fetch_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise kind.refuse(
                f"fetching {shown} failed: {type(exc).__name__}: {short(str(exc), 120)}",
                "fetch_failed",
            ) from None

    async def _fetch_with_redirects(self, url: httpx.URL, kind: Kind = IMAGE) -> bytes:
        max_redirects = self.config.max_redirects
        for hop in range(max_redirects + 1):
            if hop:
                url = parse_http_url(str(url), kind)  # scheme, host, credentials on every hop
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                addresses = await self._guard.check(url.raw_host.decode("ascii"), port)
            except kind.error:
                raise
            except MediaError as exc:  # the guard's refusals carry their reason in ``param``
                reason = exc.param or "blocked_address"
                raise kind.refuse(exc.message, reason) from None
            outcome = await self._get_pinned(url, addresses, kind)
            if isinstance(outcome, bytes):
                return outcome
            logger.debug("media: redirect %s -> %s", url, outcome.location)
            url = outcome.location
        raise kind.refuse(
            f"too many redirects fetching the {kind.noun} (more than {max_redirects})",
            "too_many_redirects",
        )

    def _pinned_request(
        self, url: httpx.URL, address: IPAddress, kind: Kind = IMAGE
    ) -> httpx.Request:
        host = url.raw_host.decode("ascii")
        headers = {
            "Host": url.netloc.decode("ascii"),
            "Accept": kind.accept,
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

    async def _get_pinned(
        self, url: httpx.URL, addresses: list[IPAddress], kind: Kind = IMAGE
    ) -> bytes | _Redirect:
        """GET ``url`` from one of the checked ``addresses`` (next one only if connecting fails)."""
        last_error: httpx.ConnectError | None = None
        for address in addresses:
            request = self._pinned_request(url, address, kind)
            try:
                response = await self._client.send(
                    request, stream=True, follow_redirects=False, auth=None
                )
            except httpx.ConnectError as exc:
                last_error = exc
                continue
            try:
                return await self._read(url, response, kind)
            finally:
                await response.aclose()
        detail = f": {short(str(last_error), 120)}" if last_error and str(last_error) else ""
        raise kind.refuse(
            f"cannot connect to {url.host!r}{detail}", "fetch_failed"
        ) from last_error

    async def _read(
        self, url: httpx.URL, response: httpx.Response, kind: Kind = IMAGE
    ) -> bytes | _Redirect:
        status = response.status_code
        shown = short(str(url))
        if status in _REDIRECT_CODES:
            location = response.headers.get("Location")
            if not location:
                raise kind.refuse(f"{shown} redirected without a Location", "fetch_failed")
            try:
                return _Redirect(url.join(location.strip()))
            except (httpx.InvalidURL, ValueError) as exc:
                raise kind.refuse(
                    f"{shown} redirected to an invalid URL: {exc}", "invalid_url"
                ) from None
        if not 200 <= status < 300 or status in (204, 206):
            phrase = response.reason_phrase or ""
            raise kind.refuse(
                f"fetching {shown} failed: the server answered HTTP {status} {phrase}".rstrip(),
                "fetch_failed",
            )
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise kind.refuse(
                f"{shown} sent a compressed ({short(encoding, 20)}) response; "
                f"{kind.noun}s must be served uncompressed",
                "fetch_failed",
            )
        limit = self.config.max_image_bytes if kind is IMAGE else self.config.max_video_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise kind.refuse(
                f"{kind.noun} at {shown} is too large: {int(declared)} bytes (limit {limit} bytes)",
                "too_large",
            )
        body = bytearray()
        # aiter_bytes == raw bytes here (only identity encoding gets this far); unlike aiter_raw it
        # also serves a body an injected transport already read (e.g. httpx.MockTransport)
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise kind.refuse(
                    f"{kind.noun} at {shown} is too large: more than {limit} bytes", "too_large"
                )
        return bytes(body)
