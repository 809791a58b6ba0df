"""Outbound address policy for user-supplied URLs (the SSRF guard of media ingress).

A user-supplied image URL must never make the service reach an address the user could not reach
themselves: loopback, private and shared (CGNAT) ranges, link-local (the cloud metadata endpoint
169.254.169.254), unique-local, unspecified, multicast and reserved addresses, including those
ranges smuggled inside IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``) and IPv6 tunnels (Teredo).

Policy (``NetGuard.check``):

- The host is resolved once (``getaddrinfo`` in a small dedicated thread pool, never on the event
  loop); an IP literal is not resolved at all.
- EVERY resolved address must be acceptable: public, or allowed by ``allow_hosts``. This is
  stricter than "the host or one of its addresses is allowed": a name that resolves to an allowed
  CIDR *and* to loopback is refused unless the name itself is allow-listed.
- ``allow_hosts`` holds exact host names (case-insensitive, no wildcards), IP addresses and CIDRs.
  An allow-listed NAME accepts whatever it resolves to (the operator vouched for it); an
  allow-listed ADDRESS or CIDR accepts only the addresses inside it.
- The checked addresses are returned so the caller connects to exactly one of them (connection
  pinning; see ``app.media``): the answer that was checked is the answer that is used, so a DNS
  rebinding between check and connect has nothing to rebind.
- Messages about a host NAME do not reveal what it resolved to (no internal DNS oracle); the
  details go to the log. Messages about an IP literal name the range, since the user wrote it.

Everything here raises ``models.errors.MediaError`` with ``param`` set to a short reason.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from models.errors import MediaError

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``(host, port) -> addresses``; the default is ``system_resolve``. Tests inject their own.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")  # deprecated, still routed inside some networks


def classify(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched (a short label), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            inner = classify(mapped)
            return f"IPv4-mapped {inner}" if inner else None
        if address in _NAT64:
            inner = classify(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
            return f"NAT64-embedded {inner}" if inner else None
        if address in _NAT64_LOCAL:
            return "local-use NAT64"
        sixtofour = address.sixtofour
        if sixtofour is not None:
            inner = classify(sixtofour)
            return f"6to4-embedded {inner}" if inner else None
        if address.teredo is not None:
            return "Teredo tunnel"
        if address in _UNIQUE_LOCAL:
            return "unique-local"
        if address in _SITE_LOCAL:
            return "site-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "shared (CGNAT)"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "non-public"
    return None


def _unmap(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(text: str) -> IPAddress | None:
    """An IP literal (``[::1]`` brackets and ``%zone`` suffixes accepted), else None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def normalise_hostname(host: str) -> str:
    return host.strip().rstrip(".").lower()


class AllowList:
    """``allow_hosts`` entries: exact host names, IP addresses and CIDRs."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.names: frozenset[str]
        self.networks: tuple[IPNetwork, ...]
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            address = parse_address(entry)
            if address is not None:
                networks.append(ipaddress.ip_network(_unmap(address)))
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = normalise_hostname(entry)
            if not name or any(c in name for c in "*/:@ "):
                raise ValueError(
                    f"media.allow_hosts entry {raw!r} is not a host name, IP address or CIDR "
                    "(wildcards are not supported)"
                )
            names.add(name.encode("idna").decode("ascii") if not name.isascii() else name)
        self.names = frozenset(names)
        self.networks = tuple(networks)

    def allows_name(self, host: str) -> bool:
        return normalise_hostname(host) in self.names

    def allows_address(self, address: IPAddress) -> bool:
        address = _unmap(address)
        return any(address in net for net in self.networks if net.version == address.version)

    def __bool__(self) -> bool:
        return bool(self.names or self.networks)


_DNS_WORKERS = 8
_dns_pool: ThreadPoolExecutor | None = None
_dns_pool_lock = threading.Lock()


def _dns_executor() -> ThreadPoolExecutor:
    """Threads for ``getaddrinfo`` only: a slow or hostile DNS server (a lookup cannot be
    cancelled) ties up these, never the default executor that decodes images."""
    global _dns_pool
    with _dns_pool_lock:
        if _dns_pool is None:
            _dns_pool = ThreadPoolExecutor(_DNS_WORKERS, thread_name_prefix="media-dns")
        return _dns_pool


async def system_resolve(host: str, port: int) -> list[str]:
    """All addresses ``host`` resolves to, in the system's preference order (off the event loop)."""
    lookup = functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    infos = await asyncio.get_running_loop().run_in_executor(_dns_executor(), lookup)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


class NetGuard:
    """Decides which addresses a fetch may connect to; see the module docstring for the policy."""

    def __init__(self, allow_hosts: Iterable[str] = (), resolver: Resolver | None = None) -> None:
        self.allow = AllowList(allow_hosts)
        self._resolve = resolver or system_resolve

    async def check(self, host: str, port: int) -> list[IPAddress]:
        """The addresses of ``host`` that may be connected to (all of them, or a MediaError).

        Raises before any connection is attempted: nothing here opens a socket except DNS.
        """
        host = normalise_hostname(host)
        if not host:
            raise MediaError("image URL has no host", param="invalid_url")
        literal = parse_address(host)
        if literal is not None:
            reason = classify(literal)
            if reason and not (self.allow.allows_address(literal) or self.allow.allows_name(host)):
                logger.warning("media fetch refused: %s is %s", literal, reason)
                raise MediaError(
                    f"address {host} is not allowed ({reason} addresses are blocked)",
                    param="blocked_address",
                )
            return [literal]

        try:
            raw = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            logger.info("media fetch: cannot resolve %r: %s", host, exc)
            raise MediaError(f"cannot resolve host {host!r}", param="dns_failed") from None
        addresses: list[IPAddress] = []
        for text in raw:
            address = parse_address(text)
            if address is None:  # a resolver must return addresses; anything else is refused
                raise MediaError(f"cannot resolve host {host!r}", param="dns_failed")
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise MediaError(f"cannot resolve host {host!r}", param="dns_failed")

        if self.allow.allows_name(host):
            return addresses
        for address in addresses:
            reason = classify(address)
            if reason and not self.allow.allows_address(address):
                logger.warning("media fetch refused: %r resolves to %s (%s)", host, address, reason)
                raise MediaError(
                    f"host {host!r} is not allowed: it resolves to a non-public address",
                    param="blocked_address",
                )
        return addresses
