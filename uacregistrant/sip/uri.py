# -*- test-case-name: tests.unit.sip.test_uri,tests.unit.agent.test_client,tests.unit.net.test_resolver -*-
"""
SIP URI parsing and comparison (RFC 3261 §19.1).

Free of I/O and of process-wide state: strings in, values out.  A caller
that parses the same texts again and again (registrars and proxies
shared by many accounts) passes its own bounded memo
(L{SharedTables.uris<uacregistrant.sip.sharing.SharedTables>}).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.numbers import parse_digits
from uacregistrant.sip.sharing import Memo

# Parameters that must match whenever either URI has them (§19.1.4).
_SIGNIFICANT_PARAMS: Final = ("user", "ttl", "method", "maddr", "transport")
_HOSTNAME: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9\-.]*[A-Za-z0-9])?\.?$")
_USER_CHARS: Final = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+$")


@dataclass(slots=True, init=False)
class SipUri:
    """
    A parsed C{sip:} or C{sips:} URI (shared between records: never
    changed once parsed).

    @ivar host: lower-cased host; IPv6 addresses without brackets.
    @ivar params: URI parameters, names lower-cased; a flag parameter maps to
        C{None}.
    """

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: dict[str, str | None]
    headers: str
    text: str

    # Written out: compiled by mypyc, a written __init__ is native code,
    # where the dataclass-generated (frozen) one stays Python.
    def __init__(
        self,
        scheme: str,
        user: str | None,
        password: str | None,
        host: str,
        port: int | None,
        params: dict[str, str | None] | None = None,
        headers: str = "",
        text: str = "",
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params = {} if params is None else params
        self.headers = headers
        self.text = text

    def __hash__(self) -> int:
        # Equal URIs have equal text (C{__eq__} compares every field).
        return hash(self.text)

    def __str__(self) -> str:
        return self.text


def transport_of(next_hop: SipUri, sips_request: bool = False) -> str:
    """
    The transport a request to C{next_hop} must use (RFC 3261 §18, §26.2.2;
    RFC 3263 §4.1; RFC 5630), lower-case: C{"tls"} whenever the hop or the
    Request-URI (C{sips_request}) is a C{sips:} URI, unless its
    C{transport} parameter names something other than UDP or TCP; else
    the hop's C{transport} parameter; else C{"udp"}.
    """
    transport = next_hop.params.get("transport")
    if transport:
        transport = transport.lower()
        if transport in ("udp", "tcp") and (next_hop.scheme == "sips" or sips_request):
            # sips asks for TLS on every hop: ;transport=tcp means TLS over
            # TCP (RFC 5630 §3.1.3), and UDP would be a downgrade.
            return "tls"
        return transport
    if next_hop.scheme == "sips" or sips_request:
        return "tls"
    return "udp"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def strip_angle_brackets(text: str) -> str:
    """Take the URI out of C{<...>} (and a display name) if present."""
    text = text.strip()
    start = text.find("<")
    if start != -1:
        end = text.find(">", start)
        if end == -1:
            raise SipParseError(f"unterminated '<' in {text!r}")
        return text[start + 1 : end].strip()
    return text


def parse_uri(text: str, memo: Memo[str, SipUri] | None = None) -> SipUri:
    """
    Parse a SIP URI, through C{memo} if given: a text found there is not
    parsed again and every caller gets the same object (immutable: it
    must not be modified).  Without C{memo}, nothing is kept.

    @param memo: the caller's bounded memo (a service's
        C{SharedTables.uris}); for texts many callers repeat
        (registrars, proxies), not for texts seen once (an AOR, a
        binding), which would only fill it.
    @raise SipParseError: if C{text} is not a C{sip:}/C{sips:} URI with a
        valid host and port.
    """
    if memo is None:
        return parse_uri_uncached(text)
    uri = memo.get(text)
    if uri is None:
        uri = memo.keep(text, parse_uri_uncached(text))
    return uri


def parse_uri_uncached(text: str) -> SipUri:
    """L{parse_uri} without a memo."""
    raw = strip_angle_brackets(text)
    scheme, sep, rest = raw.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("sip", "sips"):
        raise SipParseError(f"not a sip: or sips: URI: {text!r}")
    user: str | None = None
    password: str | None = None
    # The user part may hold '?' and ';' (RFC 3261 user-unreserved); an
    # unescaped '@' can only end it.
    at = rest.rfind("@")
    if at != -1:
        userinfo, rest = rest[:at], rest[at + 1 :]
        if not userinfo:
            raise SipParseError(f"empty user part in {text!r}")
        user, colon, pw = userinfo.partition(":")
        if not user or not _USER_CHARS.match(user):
            raise SipParseError(f"invalid user part in {text!r}")
        password = pw if colon else None
    rest, _, headers = rest.partition("?")
    hostport, _, paramtext = rest.partition(";")
    host, port = _parse_hostport(hostport, text)
    params: dict[str, str | None] = {}
    if paramtext:
        for item in paramtext.split(";"):
            if not item:
                continue
            name, eq, value = item.partition("=")
            name = unquote(name).strip().lower()
            if not name:
                raise SipParseError(f"empty parameter name in {text!r}")
            params[name] = unquote(value).strip() if eq else None
    return SipUri(scheme, user, password, host, port, params, headers, raw)


def _parse_hostport(hostport: str, original: str) -> tuple[str, int | None]:
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end == -1:
            raise SipParseError(f"unterminated IPv6 reference in {original!r}")
        host = hostport[1:end]
        tail = hostport[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SipParseError(f"invalid IPv6 address in {original!r}") from None
        if tail:
            if not tail.startswith(":"):
                raise SipParseError(f"junk after IPv6 reference in {original!r}")
            port = _parse_port(tail[1:], original)
    else:
        host, colon, porttext = hostport.partition(":")
        if colon:
            port = _parse_port(porttext, original)
        if not host or not (_HOSTNAME.match(host) or _is_ip(host)):
            raise SipParseError(f"invalid host in {original!r}")
    return host.lower(), port


def _parse_port(text: str, original: str) -> int:
    port = parse_digits(text, 65535)
    if not port:
        raise SipParseError(f"invalid port in {original[:200]!r}")
    return port


def _param_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.lower() == b.lower()


def uris_equal(a: SipUri, b: SipUri) -> bool:
    """
    Compare two URIs by the rules of RFC 3261 §19.1.4.

    User and password compare case-sensitively after unescaping; the host
    case-insensitively; a missing port differs from an explicit default
    port; C{user}, C{ttl}, C{method}, C{maddr} and C{transport} must match
    when either URI has them; other parameters only when both have them;
    header components must be the same set.
    """
    if a.scheme != b.scheme or a.host != b.host or a.port != b.port:
        return False
    if _unescape(a.user) != _unescape(b.user):
        return False
    if _unescape(a.password) != _unescape(b.password):
        return False
    for name in _SIGNIFICANT_PARAMS:
        in_a, in_b = name in a.params, name in b.params
        if in_a != in_b:
            return False
        if in_a and not _param_equal(a.params[name], b.params[name]):
            return False
    for name in a.params.keys() & b.params.keys():
        if not _param_equal(a.params[name], b.params[name]):
            return False
    return _header_set(a.headers) == _header_set(b.headers)


def _unescape(value: str | None) -> str | None:
    return None if value is None else unquote(value)


def _header_set(headers: str) -> frozenset[tuple[str, str]]:
    items = set()
    for item in headers.split("&"):
        if item:
            name, _, value = item.partition("=")
            items.add((unquote(name).lower(), unquote(value)))
    return frozenset(items)
