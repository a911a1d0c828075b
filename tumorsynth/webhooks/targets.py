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


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or not ip.is_global)


def check_target(url: str, allow_private: bool, resolve: Resolver = system_resolver) -> Target:
    """Parse and resolve ``url``; refuse what is not http(s) or reaches a non-public address (unless allowed)."""
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
            raise TargetRefused(f"the host '{host}' does not resolve")
    bad = [a for a in addresses if not is_public(a)]
    if bad:
        raise TargetRefused(f"'{host}' is (or resolves to) the non-public address {bad[0]}; webhooks go to "
                            "public addresses only (operators can allow private ones)")
    return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0])


def check_request(req, tenant: str, settings, resolve: Resolver = system_resolver) -> list:
    """A job request's ``webhook`` and ``webhook_events`` at submission, as field errors (nothing is stored yet)."""
    from ..errors import FieldError

    if req.webhook is None:
        return [FieldError("webhook_events", "name a webhook URL to send the events to")] if req.webhook_events \
            else []
    errs = []
    if settings.webhook_secret_for(tenant) is None:
        errs.append(FieldError("webhook", "this service has no webhook signing secret for your tenant; ask the "
                                          "operators to set TUMORSYNTH_WEBHOOK_SECRET, or leave webhook out"))
    try:
        check_target(req.webhook, settings.webhook_allow_private_targets, resolve)
    except TargetRefused as exc:
        errs.append(FieldError("webhook", str(exc)))
    return errs
