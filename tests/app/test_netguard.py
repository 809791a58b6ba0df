"""The SSRF address policy (app.netguard): classification, allow-list, resolution. Offline."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from app.netguard import AllowList, NetGuard, classify, system_resolve
from models.errors import MediaError


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("100.127.255.254", "shared (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "private"),  # 0.0.0.0/8 "this network"
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "private"),  # reserved 240/4: Python files it under is_private
        ("255.255.255.255", "private"),
        ("198.18.0.1", "private"),  # benchmarking
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
        ("64:ff9b::7f00:1", "NAT64-embedded loopback"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("2002:7f00:1::1", "6to4-embedded loopback"),
        ("2002:a9fe:a9fe::1", "6to4-embedded link-local"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo tunnel"),
        ("::7f00:1", "reserved"),  # IPv4-compatible (deprecated) form of 127.0.0.1
        ("2001:db8::1", "private"),  # documentation
    ],
)
def test_blocked_addresses_are_classified(address: str, label: str) -> None:
    assert classify(ipaddress.ip_address(address)) == label


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert classify(ipaddress.ip_address(address)) is None


def test_allow_list_parses_names_addresses_and_cidrs() -> None:
    allow = AllowList(["Images.Internal.", "127.0.0.1", "10.1.0.0/16", "[::1]", " "])
    assert allow.allows_name("images.internal")
    assert allow.allows_name("IMAGES.internal.")
    assert not allow.allows_name("evil.images.internal")
    assert allow.allows_address(ipaddress.ip_address("127.0.0.1"))
    assert allow.allows_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not allow.allows_address(ipaddress.ip_address("127.0.0.2"))
    assert allow.allows_address(ipaddress.ip_address("10.1.200.3"))
    assert not allow.allows_address(ipaddress.ip_address("10.2.0.1"))
    assert allow.allows_address(ipaddress.ip_address("::1"))


@pytest.mark.parametrize("entry", ["*.example.com", "http://x/", "user@host"])
def test_allow_list_rejects_wildcards_and_urls(entry: str) -> None:
    with pytest.raises(ValueError, match="allow_hosts"):
        AllowList([entry])


class FakeDNS:
    """A resolver double: a fixed table, records every lookup."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(-2, "Name or service not known")
        return self.table[host]


async def test_ip_literals_are_not_resolved() -> None:
    dns = FakeDNS({})
    guard = NetGuard([], dns)
    assert await guard.check("93.184.216.34", 80) == [ipaddress.ip_address("93.184.216.34")]
    with pytest.raises(MediaError, match=r"address 10\.0\.0\.1 is not allowed \(private") as info:
        await guard.check("10.0.0.1", 80)
    assert info.value.param == "blocked_address"
    assert dns.calls == []


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["93.184.216.34", "10.0.0.5"],  # ANY bad address refuses the host
        ["2606:4700::1", "::ffff:169.254.169.254"],
        ["fd00::1"],
    ],
)
async def test_a_name_resolving_to_any_blocked_address_is_refused(addresses: list[str]) -> None:
    guard = NetGuard([], FakeDNS({"images.example": addresses}))
    with pytest.raises(MediaError, match="resolves to a non-public address") as info:
        await guard.check("images.example", 443)
    # the message must not leak what an internal name resolves to
    assert not any(a in info.value.message for a in addresses)


async def test_public_name_returns_every_checked_address() -> None:
    guard = NetGuard([], FakeDNS({"images.example": ["93.184.216.34", "2606:2800:220:1::1"]}))
    got = await guard.check("Images.Example.", 443)
    assert [str(a) for a in got] == ["93.184.216.34", "2606:2800:220:1::1"]


async def test_allow_listed_name_accepts_what_it_resolves_to() -> None:
    guard = NetGuard(["intranet.local"], FakeDNS({"intranet.local": ["10.0.0.7"]}))
    assert [str(a) for a in await guard.check("intranet.local", 80)] == ["10.0.0.7"]


async def test_allow_listed_cidr_accepts_only_addresses_inside_it() -> None:
    dns = FakeDNS({"a.internal": ["10.1.0.5"], "b.internal": ["10.1.0.5", "127.0.0.1"]})
    guard = NetGuard(["10.1.0.0/16"], dns)
    assert [str(a) for a in await guard.check("a.internal", 80)] == ["10.1.0.5"]
    with pytest.raises(MediaError, match="non-public"):
        await guard.check("b.internal", 80)


async def test_unresolvable_host_is_a_clear_error() -> None:
    guard = NetGuard([], FakeDNS({}))
    with pytest.raises(MediaError, match=r"cannot resolve host 'nowhere\.example'") as info:
        await guard.check("nowhere.example", 80)
    assert info.value.param == "dns_failed"


async def test_system_resolver_resolves_localhost_offline() -> None:
    assert "127.0.0.1" in await system_resolve("localhost", 80)
    with pytest.raises(MediaError, match="non-public"):
        await NetGuard([]).check("localhost", 80)
