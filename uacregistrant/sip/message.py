# -*- test-case-name: tests.unit.sip.test_message,tests.unit.agent.test_client,tests.unit.core.test_registrant -*-
"""
SIP message parsing and rendering (RFC 3261 §7, §20, §25).

Bytes in, bytes out: no sockets, no clocks.  The parser extracts what a
registrant (and the test registrar) needs and raises L{SipParseError} for
anything else it cannot accept; it never raises another exception type.

No process-wide state: header and parameter names in their usual
spellings are looked up in constant tables (never written); other
spellings are matched, and remembered only in the caller's bounded
L{Names} if it passes one (C{names=}, a service's C{SharedTables.names}).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final, Iterator, Sequence

from uacregistrant.sip.errors import SipParseError, SipRenderError
from uacregistrant.sip.numbers import parse_digits
from uacregistrant.sip.sharing import Names

#: The largest message the parser accepts (bytes).
MAX_MESSAGE_SIZE: Final = 65535
#: Characters of a reason phrase kept (the rest is dropped).
MAX_REASON: Final = 128
#: The most header fields the parser accepts in one message (a 200 may
#: list hundreds of bindings, one Contact header each).
MAX_HEADERS: Final = 1024

_COMPACT: Final = {
    "v": "via",
    "f": "from",
    "t": "to",
    "m": "contact",
    "i": "call-id",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "e": "content-encoding",
    "s": "subject",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
}
_TOKEN: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_WHITESPACE: Final = re.compile(r"\s")
# A bare CR left in a header section once its line ends (CRLF, or a bare
# LF) are taken out: echoed into a request (a realm, a nonce) it would end
# a header line there.  Other control characters may appear escaped in
# quoted strings (RFC 4475 §3.1.1.2) and are escaped again when quoted.
# header-name HCOLON value (RFC 3261 §7.3.1; LWS allowed before the colon)
_HEADER_LINE: Final = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:(.*)", re.DOTALL)
_ABSOLUTE_URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[^\s<>\"]+")
# SIP / 2.0 / transport  sent-by[;params]  (LWS allowed around the slashes)
_VIA: Final = re.compile(r"\s*SIP\s*/\s*2\.0\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s+(\S.*)$", re.IGNORECASE | re.DOTALL)
# Transports a Via usually names, upper-case (parse_via's fast path).
_VIA_TRANSPORTS: Final = frozenset({"UDP", "TCP", "TLS", "SCTP", "WS", "WSS"})
# The common To/From shape, <absolute-URI> then token parameters: a value
# matching it is one parse_name_addr accepts, so it needs no full parse.
_PLAIN_NAME_ADDR: Final = re.compile(
    r"<[A-Za-z][A-Za-z0-9+\-.]*:[^\s<>\"]+>"
    r"(?:[ \t]*;[ \t]*[A-Za-z0-9\-.!%*_+`'~]+(?:[ \t]*=[ \t]*[A-Za-z0-9\-.!%*_+`'~]+)?)*"
)
# Headers whose values are comma-separated lists (RFC 3261 §7.3.1).
_LIST_HEADERS: Final = frozenset({"via", "contact", "route", "record-route", "supported", "allow", "require"})
_MAX_UINT32: Final = 2**32 - 1


def is_token(text: str) -> bool:
    """Whether C{text} is an RFC 3261 token (a method, a name, a scheme)."""
    return _TOKEN.fullmatch(text) is not None


@dataclass(slots=True, init=False)
class SipMessage:
    """
    A parsed SIP message.

    @ivar headers: C{(name, value)} pairs in order; names are lower-cased
        long forms, values unfolded and stripped.
    """

    headers: list[tuple[str, str]]
    body: bytes
    _index: dict[str, list[str]] = field(repr=False)
    _via: "Via | None" = field(repr=False)
    _cseq: tuple[int, str] | None = field(repr=False)

    # Written out (not generated): compiled by mypyc, a written __init__
    # is native code, where the dataclass-generated one stays Python.
    def __init__(self, headers: list[tuple[str, str]], body: bytes, _index: dict[str, list[str]] | None = None) -> None:
        self.headers = headers
        self.body = body
        self._via = None
        self._cseq = None
        if _index:
            self._index = _index
        else:
            index: dict[str, list[str]] = {}
            self._index = index
            for name, value in headers:
                index.setdefault(name, []).append(value)

    def get_all(self, name: str) -> list[str]:
        """All values of header C{name}, list headers split at commas."""
        key = name.lower()
        values = self._index.get(key)
        if values is None:
            return []
        if key in _LIST_HEADERS:
            return [item for value in values for item in split_list(value)]
        return list(values)

    def get(self, name: str) -> str | None:
        """The first value of header C{name}, or C{None} (a list header: its first item)."""
        key = name.lower()
        values = self._index.get(key)
        if values is None:
            return None
        if key in _LIST_HEADERS:
            for value in values:
                items = split_list(value)
                if items:
                    return items[0]
            return None
        return values[0]

    def has(self, name: str) -> bool:
        """Whether header C{name} is present."""
        return name.lower() in self._index

    @property
    def call_id(self) -> str:
        """The Call-ID header (required)."""
        value = self.get("call-id")
        if not value:
            raise SipParseError("missing Call-ID")
        return value

    @property
    def cseq(self) -> tuple[int, str]:
        """CSeq as C{(number, METHOD)} (parsed once)."""
        if self._cseq is None:
            self._cseq = self._parse_cseq()
        return self._cseq

    def _parse_cseq(self) -> tuple[int, str]:
        value = self.get("cseq")
        if value is None:
            raise SipParseError("missing CSeq")
        text, _, method = value.partition(" ")
        method = method.strip()
        # ASCII digits only (str.isdigit alone accepts "²"), checked inline: this runs per response.
        if (
            not (text.isascii() and text.isdigit() and len(text) <= 10)
            or int(text) > _MAX_UINT32
            or (method != "REGISTER" and not is_token(method))
        ):
            raise SipParseError(f"invalid CSeq {value[:80]!r}")
        return int(text), method.upper()

    @property
    def top_via(self) -> "Via":
        """The topmost Via (parsed once)."""
        if self._via is None:
            value = self.get("via")
            if value is None:
                raise SipParseError("missing Via")
            self._via = parse_via(value)
        return self._via

    def int_header(self, name: str) -> int | None:
        """A header holding a non-negative integer (Expires, Min-Expires)."""
        value = self.get(name)
        if value is None:
            return None
        return parse_delta_seconds(value, name)


@dataclass(slots=True, init=False)
class Request(SipMessage):
    """A SIP request."""

    method: str
    uri: str

    def __init__(
        self, headers: list[tuple[str, str]], body: bytes, _index: dict[str, list[str]] | None = None, method: str = "", uri: str = ""
    ) -> None:
        SipMessage.__init__(self, headers, body, _index)
        self.method = method
        self.uri = uri


@dataclass(slots=True, init=False)
class Response(SipMessage):
    """A SIP response."""

    status: int
    reason: str

    def __init__(
        self, headers: list[tuple[str, str]], body: bytes, _index: dict[str, list[str]] | None = None, status: int = 0, reason: str = ""
    ) -> None:
        SipMessage.__init__(self, headers, body, _index)
        self.status = status
        self.reason = reason

    @property
    def retry_after(self) -> int | None:
        """Retry-After seconds, or C{None}."""
        value = self.get("retry-after")
        if value is None:
            return None
        head = value.split(";", 1)[0].split("(", 1)[0].strip()
        return parse_delta_seconds(head, "Retry-After")


@dataclass(slots=True, init=False)
class Via:
    """One Via value (not to be changed once parsed)."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    def __init__(self, transport: str, host: str, port: int | None, params: dict[str, str | None]) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params

    @property
    def branch(self) -> str | None:
        """The branch parameter."""
        return self.params.get("branch")


@dataclass(slots=True, init=False)
class NameAddr:
    """A Contact/From/To value: the URI text and the header parameters (not changed once parsed)."""

    uri: str
    params: dict[str, str | None]
    display: str

    def __init__(self, uri: str, params: dict[str, str | None], display: str = "") -> None:
        self.uri = uri
        self.params = params
        self.display = display


def parse_delta_seconds(value: str, name: str) -> int:
    """Parse a delta-seconds value, clamping to 2**32-1 as RFC 3261 says."""
    value = value.strip()
    if not (value.isascii() and value.isdigit()):  # ASCII digits only: "²".isdigit() is true
        raise SipParseError(f"invalid {name} value {value[:80]!r}")
    value = value.lstrip("0") or "0"
    if len(value) > 10:
        return _MAX_UINT32
    return min(int(value), _MAX_UINT32)


def _separators(text: str, sep: str, angle_brackets: bool) -> Iterator[int]:
    """
    Positions of C{sep} outside quoted strings (and, if asked, outside
    C{<...>}).

    @raise SipParseError: for an unterminated quoted string.
    """
    quoted = False
    angle = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif angle_brackets and c == "<":
            angle = True
        elif angle_brackets and c == ">":
            angle = False
        elif c == sep and not angle:
            yield i
        i += 1
    if quoted:
        raise SipParseError("unterminated quoted string")


def _split(text: str, sep: str, angle_brackets: bool) -> list[str]:
    if sep not in text:
        if '"' in text:
            for _ in _separators(text, sep, angle_brackets):
                pass  # only to refuse an unterminated quoted string
        return [text]
    if '"' not in text and not (angle_brackets and "<" in text):
        return text.split(sep)
    parts: list[str] = []
    start = 0
    for i in _separators(text, sep, angle_brackets):
        parts.append(text[start:i])
        start = i + 1
    parts.append(text[start:])
    return parts


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and <>."""
    return [item for item in (part.strip() for part in _split(value, ",", True)) if item]


def parse_params(text: str, names: Names | None = None) -> dict[str, str | None]:
    """
    Parse C{;name=value;flag} parameters (leading C{;} optional).

    @param names: where to remember parameter names in unusual spellings
        (none by default).
    """
    params: dict[str, str | None] = {}
    if not text:
        return params
    known = _PARAM_SPELLINGS
    for item in text.split(";") if '"' not in text else _split(text, ";", False):
        raw, eq, value = item.partition("=")
        name = known.get(raw)
        if name is None and names is not None:
            name = names.params.get(raw)
        if name is None:
            name = raw.strip().lower()
            if not name and not eq and not value:
                continue  # empty item (";;" or a leading ";")
            if not is_token(name):
                raise SipParseError(f"invalid parameter {item.strip()!r}")
            if names is not None:
                names.remember(names.params, raw, name)
        value = value.strip()
        if eq and value.startswith('"'):
            value = unquote_string(value)
        params[name] = value if eq else None
    return params


def unquote_string(text: str) -> str:
    """Undo a quoted-string (RFC 3261 §25.1): strip quotes, unescape."""
    text = text.strip()
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise SipParseError(f"invalid quoted string {text!r}")
    inner = text[1:-1]
    if "\\" not in inner:
        if '"' in inner:
            raise SipParseError(f"stray quote in {text!r}")
        return inner
    out: list[str] = []
    i = 1
    end = len(text) - 1
    while i < end:
        c = text[i]
        if c == "\\":
            if i + 1 >= end:
                raise SipParseError(f"dangling escape in {text!r}")
            i += 1
            c = text[i]
        elif c == '"':
            raise SipParseError(f"stray quote in {text!r}")
        out.append(c)
        i += 1
    return "".join(out)


def printable(text: str) -> str:
    """C{text} with control characters escaped, for logs and messages that may quote a peer (a certificate name, a reason phrase)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quote_string(text: str) -> str:
    """
    Render C{text} as a quoted-string; a backslash, a quote and control
    characters go as quoted-pairs.

    @raise SipRenderError: if C{text} holds a CR or LF, which no
        quoted-string can carry (RFC 3261 §25.1).
    """
    if "\\" not in text and '"' not in text and text.isprintable():
        return f'"{text}"'
    if "\r" in text or "\n" in text:
        raise SipRenderError(f"CR or LF in a quoted value {text[:40]!r}")
    return '"' + _QUOTED_PAIR.sub(r"\\\g<0>", text) + '"'


_QUOTED_PAIR: Final = re.compile(r'[\\"\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')


def parse_via(value: str, names: Names | None = None) -> Via:
    """Parse one Via value: C{SIP/2.0/UDP host[:port];params}."""
    transport, space, rest = value[8:].partition(" ")
    if not (value.startswith("SIP/2.0/") and transport in _VIA_TRANSPORTS and space and rest and not rest[0].isspace()):
        # Not the usual "SIP/2.0/UDP host...": the full grammar (LWS around the slashes...).
        match = _VIA.match(value)
        if match is None:
            raise SipParseError(f"invalid Via {value[:80]!r}")
        transport, rest = match.group(1), match.group(2)
    sent_by, _, paramtext = rest.partition(";")
    sent_by = sent_by.strip()
    if not sent_by:
        raise SipParseError(f"Via without sent-by: {value!r}")
    port: int | None = None
    if sent_by.startswith("["):
        end = sent_by.find("]")
        if end == -1:
            raise SipParseError(f"invalid Via host {value!r}")
        host, tail = sent_by[1:end], sent_by[end + 1 :]
        if tail:
            port = _via_port(tail.lstrip(":"), value) if tail.startswith(":") else None
            if port is None:
                raise SipParseError(f"invalid Via port {value!r}")
    else:
        host, colon, porttext = sent_by.partition(":")
        if colon:
            port = _via_port(porttext, value)
    if not host or _WHITESPACE.search(host):
        raise SipParseError(f"invalid Via host {value[:80]!r}")
    return Via(transport.upper(), host.lower(), port, parse_params(paramtext, names))


def _via_port(text: str, value: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 0 < int(text) < 65536:
        raise SipParseError(f"invalid Via port {value[:80]!r}")
    return int(text)


def parse_name_addr(value: str, names: Names | None = None) -> NameAddr:
    """
    Parse a Contact, From or To value.

    Without angle brackets, everything after the first C{;} is a header
    parameter, not part of the URI (RFC 3261 §20.10).

    @param names: as for L{parse_params}.
    """
    value = value.strip()
    if value == "*":
        return NameAddr("*", {})
    lt = _find_unquoted(value, "<")
    if lt != -1:
        gt = value.find(">", lt)
        if gt == -1:
            raise SipParseError(f"unterminated '<' in {value[:80]!r}")
        display = value[:lt].strip()
        if display.startswith('"'):
            display = unquote_string(display)
        elif display and not all(is_token(word) for word in display.split()):
            raise SipParseError(f"display name must be tokens or quoted: {display[:80]!r}")
        uri = value[lt + 1 : gt]
        if uri != uri.strip():
            raise SipParseError(f"whitespace inside <> in {value[:80]!r}")
        params = parse_params(value[gt + 1 :].strip(), names)
    else:
        display = ""
        uri, _, paramtext = value.partition(";")
        uri = uri.strip()
        if "," in uri or "?" in uri:
            raise SipParseError(f"a URI with ',' or '?' must be in <>: {value[:80]!r}")
        params = parse_params(paramtext, names)
    if not _ABSOLUTE_URI.fullmatch(uri):
        raise SipParseError(f"invalid URI in {value[:80]!r}")
    return NameAddr(uri, params, display)


def _find_unquoted(text: str, char: str) -> int:
    if '"' not in text:
        return text.find(char)
    return next(_separators(text, char, False), -1)


def parse_message(data: bytes, names: Names | None = None) -> Request | Response:
    """
    Parse one SIP message from a datagram.

    @param names: where to remember header and parameter names in unusual
        spellings (a service's C{SharedTables.names}); none by default,
        which costs only peers that spell names unusually.
    @raise SipParseError: for anything malformed, truncated or oversized.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end != -1:
        head, body = data[:end], data[end + 4 :]
    else:
        end = data.find(b"\n\n")
        if end == -1:
            raise SipParseError("truncated message: no end of headers")
        head, body = data[:end], data[end + 2 :]
    lines = _head_lines(head.decode("utf-8", errors="replace"))
    start_line = lines[0]
    headers, index = _parse_header_lines(lines, names)
    length_values = index.get("content-length")
    if length_values:
        length = parse_delta_seconds(length_values[0], "Content-Length")
        if length > len(body):
            raise SipParseError(f"truncated body: Content-Length {length}, have {len(body)}")
        body = body[:length]
    message: Request | Response
    if start_line.startswith("SIP/") or start_line[:4].upper() == "SIP/":
        version, _, rest = start_line.partition(" ")
        if version.upper() != "SIP/2.0":
            raise SipParseError(f"unsupported version in {start_line[:80]!r}")
        code, _, reason = rest.partition(" ")
        if len(code) != 3 or not (code.isascii() and code.isdigit()) or not 100 <= int(code) <= 699:
            raise SipParseError(f"invalid status line {start_line[:80]!r}")
        # The reason phrase is kept (last_reply, logs, events): bounded.
        message = Response(headers, body, index, status=int(code), reason=reason.strip()[:MAX_REASON])
    else:
        parts = start_line.split(" ")
        if len(parts) != 3 or not is_token(parts[0]) or parts[2] != "SIP/2.0":
            raise SipParseError(f"invalid request line {start_line[:80]!r}")
        if not _ABSOLUTE_URI.fullmatch(parts[1]):
            raise SipParseError(f"invalid Request-URI {parts[1][:80]!r}")
        message = Request(headers, body, index, method=parts[0], uri=parts[1])
    _validate(message, names)
    return message


def _head_lines(text: str) -> list[str]:
    """
    The lines of a header section: each ended by CRLF, or by a bare LF;
    a bare CR is refused.
    """
    lines = text.splitlines()
    # Every break a CRLF exactly when the lines and two characters per
    # break make the whole text, no break ending it (splitlines drops that
    # one): the usual case, at half the cost (a sum of lengths, where
    # counting CRLFs scans every character).
    size = 2 * len(lines) - 2
    for line in lines:
        size += len(line)
    if size == len(text) and text[-1:] not in _LINE_BREAKS:
        return lines
    # A bare LF or CR, or another character splitlines breaks at: the strict way.
    text = text.replace("\r\n", "\n")
    if "\r" in text:
        raise SipParseError("a bare CR in the header section")
    return text.split("\n")


#: What str.splitlines breaks at (one of them ending a text adds no line; "" ends every text).
_LINE_BREAKS: Final = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"

#: Headers a message must carry exactly once (Via at least once).
_REQUIRED_ONCE: Final = ("to", "from", "call-id", "cseq")
#: Headers that may not repeat.
_SINGLE: Final = frozenset(_REQUIRED_ONCE + ("max-forwards", "content-length", "expires", "min-expires"))


def _validate(message: SipMessage, names: Names | None) -> None:
    """The checks every message gets (RFC 3261 §8.1.1, §20): cheap, eager."""
    index = message._index
    for name in _REQUIRED_ONCE:
        if name not in index:
            raise SipParseError(f"missing {name} header")
    # (Repeated single headers were refused while indexing.)
    if "via" not in index:
        raise SipParseError("missing Via header")
    via = message.get("via")
    if via is None:
        raise SipParseError("missing Via")
    message._via = parse_via(via, names)
    number, method = message.cseq
    if number > 2**31 - 1:
        raise SipParseError(f"CSeq number {number} exceeds 2**31-1")
    if isinstance(message, Request) and method != message.method.upper():
        raise SipParseError(f"CSeq method {method} does not match {message.method}")
    for name in ("to", "from"):
        value = index[name][0]
        if _PLAIN_NAME_ADDR.fullmatch(value) is None:
            parse_name_addr(value, names)  # the full check, raising for bad values
    forwards = index.get("max-forwards")
    if forwards is not None and parse_digits(forwards[0], 255) is None:
        raise SipParseError(f"invalid Max-Forwards {forwards[0][:20]!r}")


def _parse_header_lines(lines: list[str], names: Names | None) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """
    The header fields of a message's lines (the start line, C{lines[0]},
    skipped): in order, and by canonical name.

    @raise SipParseError: for a line that is no header field, a repeated
        single header, more than C{MAX_HEADERS} fields.
    """
    headers: list[tuple[str, str]] = []
    index: dict[str, list[str]] = {}
    known = _HEADER_SPELLINGS
    for number in range(1, len(lines)):
        line = lines[number]
        first = line[:1]
        if first == " " or first == "\t":
            if not headers:
                raise SipParseError("continuation line before any header")
            previous, value = headers[-1]
            value = value + " " + line.strip()
            headers[-1] = (previous, value)
            index[previous][-1] = value
            continue
        colon = line.find(":")
        if colon == -1:  # (not even a known name alone)
            raise SipParseError(f"invalid header line {line[:80]!r}")
        raw = line[:colon]
        name: str | None = known.get(raw)
        if name is None and names is not None:
            name = names.headers.get(raw)
        if name is None:
            name = _header_name(line)
            if names is not None:
                names.remember(names.headers, raw, name)
        value = line[colon + 1 :].strip()
        headers.append((name, value))
        values = index.get(name)
        if values is None:
            index[name] = [value]
        elif name in _SINGLE:
            raise SipParseError(f"more than one {name} header")
        else:
            values.append(value)
    if len(headers) > MAX_HEADERS:
        raise SipParseError(f"more than {MAX_HEADERS} header fields")
    return headers, index


def _header_name(line: str) -> str:
    """The canonical name of a header line's field (lower-case, long form)."""
    match = _HEADER_LINE.match(line)
    if match is None:
        raise SipParseError(f"invalid header line {line[:80]!r}")
    name = match.group(1).lower()
    return _COMPACT.get(name, name)


def _spellings(names: Sequence[str]) -> Iterator[str]:
    for name in names:
        yield from {name, name.lower(), name.upper(), "-".join(word.capitalize() for word in name.split("-"))}


#: Header names as peers usually spell them (RFC 3261's spelling, lower,
#: upper and capitalised, and the compact forms), mapped to their
#: canonical form: looked up, not matched.  Constant: never written.
_HEADER_SPELLINGS: Final[dict[str, str]] = {
    raw: _header_name(raw + ":")
    for raw in _spellings(
        (
            "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
            "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact", "Content-Disposition",
            "Content-Encoding", "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date", "Error-Info",
            "Event", "Expires", "From", "In-Reply-To", "Max-Forwards", "Min-Expires", "MIME-Version", "Organization",
            "P-Associated-URI", "Path", "Priority", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require",
            "Reason", "Record-Route", "Refer-To", "Reply-To", "Require", "Retry-After", "Route", "Security-Server",
            "Server", "Service-Route", "Subject", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via",
            "Warning", "WWW-Authenticate",
            *_COMPACT,
        )
    )
}
#: The same for parameter names (Via, Contact, To/From, URI parameters).
_PARAM_SPELLINGS: Final[dict[str, str]] = {
    raw: raw.lower()
    for raw in _spellings(
        (
            "branch", "received", "rport", "maddr", "ttl", "tag", "expires", "q", "lr", "transport", "user",
            "method", "methods", "+sip.instance", "reg-id", "ob", "gr", "pub-gruu", "temp-gruu", "comp", "alias",
            "keep", "sigcomp-id",
        )
    )
}


def render_request(
    method: str,
    uri: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> bytes:
    """Render a request; C{Content-Length} is appended."""
    lines = [f"{method} {uri} SIP/2.0"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append(f"Content-Length: {len(body)}")
    return _head_bytes(lines) + body


def _head_bytes(lines: list[str]) -> bytes:
    """Join a header section; refuse a line that would hold a CR or LF."""
    text = "\r\n".join(lines) + "\r\n\r\n"
    check_line_count(text, len(lines))
    return text.encode("utf-8")


def check_line_count(text: str, lines: int) -> None:
    """
    Make sure a rendered header section of C{lines} lines holds no CR or LF
    but the line ends: a value carrying one would inject a header line.

    @raise SipRenderError: otherwise.
    """
    expected = lines + 1  # the empty line ending the header section
    if text.count("\n") != expected or text.count("\r") != expected:
        raise SipRenderError("a header value holds a CR or LF")


def render_response(
    request: Request,
    status: int,
    reason: str,
    extra: Sequence[tuple[str, str]] = (),
    to_tag: str | None = None,
    vias: Sequence[str] | None = None,
) -> bytes:
    """
    Render a response to C{request} (RFC 3261 §8.2.6): Via, From, To,
    Call-ID and CSeq copied, a To tag added when given.

    @param vias: the Via values to send instead of the request's (its
        top one stamped by L{stamp_via}).
    @raise SipRenderError: if a value holds a CR or LF.
    """
    lines = [f"SIP/2.0 {status} {reason}"]
    for value in request.get_all("via") if vias is None else vias:
        lines.append(f"Via: {value}")
    to = request.get("to") or ""
    if to_tag and "tag" not in parse_name_addr(to).params:
        to = f"{to};tag={to_tag}"
    lines.append(f"From: {request.get('from') or ''}")
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {request.get('call-id') or ''}")
    lines.append(f"CSeq: {request.get('cseq') or ''}")
    lines.extend(f"{name}: {value}" for name, value in extra)
    lines.append("Content-Length: 0")
    return _head_bytes(lines)


# A valueless rport parameter (RFC 3581 §3), to be given the source port.
_BARE_RPORT: Final = re.compile(r";[ \t]*rport(?=[ \t]*(?:;|$))", re.IGNORECASE)


def stamp_via(value: str, ip: str, port: int) -> str:
    """
    The top Via of a request as a server returns it in its responses:
    C{received=ip} added when the sent-by host is not the source address
    (RFC 3261 §18.2.1) or when C{rport} is asked for, and a valueless
    C{rport} given the source port (RFC 3581 §4).  The rest is kept as
    it came.

    @param ip: the source address of the request (an IPv6 scope is dropped).
    @raise SipParseError: if C{value} is not a Via.
    """
    via = parse_via(value)
    ip = ip.partition("%")[0]
    rport = "rport" in via.params and via.params["rport"] is None
    if rport:
        value = _BARE_RPORT.sub(f";rport={port}", value, count=1)
    if "received" not in via.params and (rport or not _same_address(via.host, ip)):
        value = f"{value};received={ip}"
    return value


def _same_address(host: str, ip: str) -> bool:
    """Whether a Via host is the IP literal C{ip} (spelt alike or not)."""
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(ip)
    except ValueError:
        return host == ip.lower()
