"""Where a webhook may go: http(s) only, and not to private, loopback or link-local addresses unless allowed.

Checked at submission (a literal private IP, or a host that resolves to one, is a 422) and again at each delivery,
where the request is then sent to the very address that was checked (a DNS answer that changed in between, as in a
rebinding attack, cannot redirect it).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]


class TargetRefused(ValueError):
    """The URL is not a place this service sends webhooks to; the message says why."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # as written in the URL (a name, or an address without brackets)
    port: int
    address: str | None  # the checked address the request goes to; None: not checked (private targets allowed)

    def pinned_url(self) -> str:
        """The URL with the host replaced by the checked address (IPv6 in brackets)."""
        if self.address is None:
            return self.url
        parts = urlsplit(self.url)
        addr = f"[{self.address}]" if ":" in self.address else self.address
        path = parts.path or "/"
        return f"{parts.scheme}://{addr}:{self.port}{path}" + (f"?{parts.query}" if parts.query else "")

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# IPv6 forms that carry an IPv4 address the network may deliver to (RFC 4291, 6052, 8215, 3056, 4380, 2765).
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
COMPATIBLE = ipaddress.IPv6Network("::/96")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # the operator picks /48, /56, /64 or /96 inside it


def _rfc6052(ip: ipaddress.IPv6Address, prefix_len: int) -> ipaddress.IPv4Address:
    """The IPv4 address a NAT64 address of ``prefix_len`` embeds: bits 64–71 (the u octet) are skipped."""
    b = ip.packed
    if prefix_len == 96:
        return ipaddress.IPv4Address(b[12:16])
    rest = b[:8] + b[9:]
    return ipaddress.IPv4Address(rest[prefix_len // 8 : prefix_len // 8 + 4])


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 transition form carries: mapped, translated, compatible, NAT64 (well-known and
    local-use, every RFC 6052 layout), 6to4, and Teredo (server, and the client: the last 32 bits XOR 0xffffffff)."""
    out: list[ipaddress.IPv4Address] = []
    if ip in MAPPED or ip in TRANSLATED or ip in NAT64 or ip in COMPATIBLE:
        out.append(_rfc6052(ip, 96))
    if ip in LOCAL_NAT64:
        out.extend(_rfc6052(ip, n) for n in (48, 56, 64, 96))
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    return out


def _is_public_one(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def is_public(address: str) -> bool:
    """Public, and so is every IPv4 address it embeds (``[2002:7f00:1::]`` is 127.0.0.1 by 6to4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if ip.ipv4_mapped is not None:
            return _is_public_one(ip.ipv4_mapped)
        if not all(_is_public_one(v4) for v4 in embedded):
            return False
    return _is_public_one(ip)


def check_characters(url: str) -> None:
    """Printable ASCII only: a control character (CR/LF would split the request line), a space or a non-ASCII
    character has no place in a URL sent on the wire, and parsers disagree on what they mean."""
    for i, ch in enumerate(url):
        if not "\x21" <= ch <= "\x7e":
            raise TargetRefused(
                f"the URL has the character U+{ord(ch):04X} at position {i}; percent-encode it "
                "(and write an international host name in its xn-- form)"
            )


def check_target(url: str, allow_private: bool, resolve: Resolver = system_resolver) -> Target:
    """Parse and resolve ``url``; refuse what is not http(s) or reaches a non-public address (unless allowed)."""
    check_characters(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TargetRefused("use an http:// or https:// URL")
    host = parts.hostname
    if not host:
        raise TargetRefused("the URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("leave credentials out of the URL; verify the webhook-signature header instead")
    port = port or (443 if scheme == "https" else 80)
    if allow_private:  # nothing to check, so no DNS lookup at submission; the HTTP client resolves at delivery
        return Target(url=url, scheme=scheme, host=host, port=port, address=None)
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise TargetRefused(f"the host '{host}' does not resolve") from exc
        if not addresses:
            raise TargetRefused(f"the host '{host}' does not resolve") from None
    bad = [a for a in addresses if not is_public(a)]
    if bad:
        raise TargetRefused(
            f"'{host}' is (or resolves to) the non-public address {bad[0]}; webhooks go to "
            "public addresses only (operators can allow private ones)"
        )
    return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0])


def check_request(req, tenant: str, settings, resolve: Resolver = system_resolver) -> list:
    """A job request's ``webhook`` and ``webhook_events`` at submission, as field errors (nothing is stored yet)."""
    from ..errors import FieldError

    if req.webhook is None:
        return [FieldError("webhook_events", "name a webhook URL to send the events to")] if req.webhook_events else []
    errs = []
    if settings.webhook_secret_for(tenant) is None:
        errs.append(
            FieldError(
                "webhook",
                "this service has no webhook signing secret for your tenant; ask the "
                "operators to set TUMORSYNTH_WEBHOOK_SECRET, or leave webhook out",
            )
        )
    try:
        check_target(req.webhook, settings.webhook_allow_private_targets, resolve)
    except TargetRefused as exc:
        errs.append(FieldError("webhook", str(exc)))
    return errs
