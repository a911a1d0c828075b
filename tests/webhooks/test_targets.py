"""Webhook targets: every IPv6 transition form is checked for the IPv4 address it carries, and URLs are parsed
strictly. Unit tests: no network (a literal address needs no DNS; names go through a fake resolver)."""

from __future__ import annotations

import ipaddress

import pytest

from tumorsynth.webhooks.targets import TargetRefused, check_target, embedded_ipv4, is_public

NON_PUBLIC_V4 = ["127.0.0.1", "10.1.2.3", "192.168.0.10", "172.16.5.4", "169.254.169.254", "100.64.0.1", "0.0.0.0"]


def sixtofour(v4: str) -> str:
    return str(ipaddress.IPv6Address((0x2002 << 112) | (int(ipaddress.IPv4Address(v4)) << 80) | 1))


def teredo_client(v4: str, server: str = "65.54.227.120") -> str:
    """Teredo (RFC 4380): 2001:0::/32, the server's IPv4, flags and port, then the client's IPv4 XOR 0xffffffff."""
    value = (0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64) | (0x8000 << 48) | (0x63BF << 32)
    return str(ipaddress.IPv6Address(value | (int(ipaddress.IPv4Address(v4)) ^ 0xFFFFFFFF)))


def nat64(v4: str) -> str:
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(ipaddress.IPv4Address(v4))))


def local_nat64(v4: str, prefix_len: int) -> str:
    """RFC 6052 layout inside 64:ff9b:1::/48 for a given prefix length (the u octet, bits 64–71, stays zero)."""
    base = bytearray(ipaddress.IPv6Address("64:ff9b:1::").packed)
    v = ipaddress.IPv4Address(v4).packed
    if prefix_len == 96:
        base[12:16] = v
    else:
        rest = base[:8] + base[9:]
        rest[prefix_len // 8 : prefix_len // 8 + 4] = v
        base = rest[:8] + b"\x00" + rest[8:15]
    return str(ipaddress.IPv6Address(bytes(base)))


def compatible(v4: str) -> str:
    return str(ipaddress.IPv6Address(int(ipaddress.IPv4Address(v4))))


def mapped(v4: str) -> str:
    return f"::ffff:{v4}"


def translated(v4: str) -> str:
    return str(ipaddress.IPv6Address((0xFFFF << 48) | int(ipaddress.IPv4Address(v4))))  # ::ffff:0:a.b.c.d


FORMS = {
    "6to4": sixtofour,
    "teredo": teredo_client,
    "nat64": nat64,
    "compatible": compatible,
    "mapped": mapped,
    "translated": translated,
    **{f"local-nat64/{n}": (lambda v, n=n: local_nat64(v, n)) for n in (48, 56, 64, 96)},
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("v4", NON_PUBLIC_V4)
def test_each_transition_form_of_a_non_public_ipv4_is_refused(form, v4):
    address = FORMS[form](v4)
    assert ipaddress.IPv4Address(v4) in embedded_ipv4(ipaddress.IPv6Address(address)), address
    assert not is_public(address), address
    with pytest.raises(TargetRefused, match="non-public"):
        check_target(f"http://[{address}]/hook", allow_private=False)
    with pytest.raises(TargetRefused, match="non-public"):  # and when a name resolves to it
        check_target("https://hooks.example.com/x", allow_private=False, resolve=lambda h, p: [address])


def test_the_attack_address_6to4_of_loopback_is_refused():
    assert embedded_ipv4(ipaddress.IPv6Address("2002:7f00:1::")) == [ipaddress.IPv4Address("127.0.0.1")]
    with pytest.raises(TargetRefused):
        check_target("http://[2002:7f00:1::]/", allow_private=False)


def test_teredo_client_is_the_last_32_bits_xor_ffffffff():
    server, client = embedded_ipv4(ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
    assert (str(server), str(client)) == ("65.54.227.120", "192.0.2.45")  # RFC 4380's example


def test_public_addresses_and_6to4_of_a_public_ipv4_are_allowed():
    for address in ["8.8.8.8", "2606:4700:4700::1111", sixtofour("8.8.8.8")]:
        assert is_public(address), address
        assert (
            check_target(
                f"https://[{address}]/h" if ":" in address else f"https://{address}/h", allow_private=False
            ).address
            == address
        )


def test_a_plain_global_ipv6_embeds_nothing():
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700:4700::1111")) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/\r\nX: 1",
        "http://example.com/a b",
        "http://exa\tmple.com/",
        "http://example.com/\x00",
        "http://example.com/\x7f",
        "http://example.com/\u202e",
        " http://example.com/",
        "http://bücher.example/",
    ],
)
def test_urls_with_control_space_or_non_ascii_characters_are_refused_even_where_private_targets_are_allowed(url):
    with pytest.raises(TargetRefused, match="percent-encode"):
        check_target(url, allow_private=True)
