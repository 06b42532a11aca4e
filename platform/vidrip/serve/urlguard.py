"""Fetch an ``http(s)`` media URL without letting a request reach places it must not (no SSRF).

A host is turned into addresses before anything connects: ``localhost`` and ``*.localhost`` (with or
without a trailing dot) are loopback by definition (RFC 6761) and never looked up; numeric spellings
that C's ``inet_aton`` accepts (``2130706433``, ``0x7f.1``, ``127.1``) are read as the address they
spell; only other names go to the resolver. Every address must be public (``is_global``), or inside a
network the config allows; an IPv4-mapped IPv6 address is judged by its IPv4 address. The connection
then goes to the address that was checked (the name is sent as ``Host`` and for TLS), so a name that
resolves differently a second time cannot slip past. Redirects are followed by hand, each hop checked
the same way. The body is read up to a byte limit, within a deadline.

    body = fetch("https://example.org/case.mp4", FetchPolicy(max_bytes=50_000_000))
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

__all__ = ["FetchPolicy", "Refused", "TooLarge", "Unreachable", "fetch", "host_addresses", "refusal"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(ValueError):
    """The URL points somewhere media may not come from."""


class TooLarge(ValueError):
    """The body is larger than allowed."""


class Unreachable(ValueError):
    """The URL could not be fetched (connection, status, timeout)."""


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    timeout_s: float = 20.0
    max_redirects: int = 3
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default_factory=tuple)

    @staticmethod
    def of(max_bytes: int, timeout_s: float, max_redirects: int, allow_networks: list[str]) -> FetchPolicy:
        nets = tuple(ipaddress.ip_network(n, strict=False) for n in allow_networks)
        return FetchPolicy(max_bytes, timeout_s, max_redirects, nets)


def _numeric(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if all(c in "0123456789abcdefx." for c in host):  # C's other IPv4 spellings: 2130706433, 0x7f.1, 127.1
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def host_addresses(host: str) -> list[Address]:
    """Every address ``host`` stands for (see the module docstring for what is looked up and what is not)."""
    name = host.strip().strip("[]").split("%", 1)[0].rstrip(".").lower()
    if not name:
        raise Refused("the URL has no host")
    if name == "localhost" or name.endswith(".localhost"):
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    numeric = _numeric(name)
    if numeric is not None:
        return [numeric]
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unreachable(f"cannot resolve host {host!r} ({exc})") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))


def _kind(addr: Address) -> str | None:
    """Why ``addr`` is not public, or None when it is."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return _kind(addr.ipv4_mapped)
    for attr, what in (
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_private", "a private"),
        ("is_multicast", "a multicast"),
        ("is_unspecified", "an unspecified"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(addr, attr):
            return what
    return None if addr.is_global else "a non-public"


def refusal(addr: Address, policy: FetchPolicy) -> str | None:
    """Why fetching from ``addr`` is refused under ``policy``, or None when it is allowed."""
    plain = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped else addr
    if any(plain.version == net.version and plain in net for net in policy.allow_networks):
        return None
    kind = _kind(addr)
    return None if kind is None else f"{plain} is {kind} address"


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to a checked address, naming the host only in headers."""

    def __init__(self, address: str, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to a checked address; the certificate is checked against the host name."""

    def __init__(self, address: str, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _checked_address(url: str, policy: FetchPolicy) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise Refused(f"only http and https URLs are fetched, not {parts.scheme!r}")
    if parts.username or parts.password:
        raise Refused("URLs with credentials are refused")
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused("the URL's port is not a number") from None
    addresses = host_addresses(host)
    for addr in addresses:
        why = refusal(addr, policy)
        if why is not None:
            raise Refused(f"host {host!r}: {why}; media may only come from public addresses")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return str(addresses[0]), host, port, path


def fetch(url: str, policy: FetchPolicy) -> bytes:
    """The body of ``url`` after every check; raises :class:`Refused`, :class:`TooLarge` or :class:`Unreachable`."""
    deadline = time.monotonic() + policy.timeout_s
    for _ in range(policy.max_redirects + 1):
        address, host, port, path = _checked_address(url, policy)
        cls = _PinnedHTTPS if url.lower().startswith("https:") else _PinnedHTTP
        conn = cls(address, host, port, timeout=max(0.1, deadline - time.monotonic()))
        try:
            conn.request("GET", path, headers={"User-Agent": "vidrip-serve", "Accept": "*/*"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise Unreachable(f"redirect ({resp.status}) without a Location")
                url = urljoin(url, location)
                continue
            if resp.status != 200:
                raise Unreachable(f"the server answered HTTP {resp.status}")
            declared = resp.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise TooLarge(f"{int(declared)} bytes > the limit of {policy.max_bytes}")
            body = bytearray()
            while chunk := resp.read(min(1 << 16, policy.max_bytes + 1 - len(body))):
                body += chunk
                if len(body) > policy.max_bytes:
                    raise TooLarge(f"more than the limit of {policy.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise Unreachable(f"not downloaded within {policy.timeout_s:.0f} s")
            return bytes(body)
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
    raise Unreachable(f"more than {policy.max_redirects} redirects")
