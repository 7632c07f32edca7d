# -*- test-case-name: tests.unit.core.test_account,tests.unit.agent.test_changes,tests.unit.agent.test_client -*-
"""
One account as configured in the table, validated.

A table row becomes an L{Account} or raises L{RowError} saying why and how
to fix it, whatever the row holds (text that is not UTF-8, a REAL where a
number belongs, a control character); nothing else here.

Every value that reaches the wire is checked here: no control character
(CR and LF above all) and no whitespace inside a URI or outside the quoted
parts of binding_params.  The key columns (aor, binding_URI, registrar)
must be stored exactly as the daemon uses them (no C{<>}, no surrounding
spaces), because admin writes and NOTIFYs find rows by that text.

What many accounts repeat is kept once in the caller's L{SharedTables}
(a service's, passed as C{shared=}): the expiry, and the parsed next hop
(registrars and proxies are shared by many accounts).  Text columns that
repeat (registrar, proxy, binding_params...) go through L{sys.intern},
whose table forgets a string once nothing holds it.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Final, Mapping

from uacregistrant.core.socketspec import SocketSpecError, normalise_socket
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.message import parse_params
from uacregistrant.sip.numbers import parse_signed
from uacregistrant.sip.sharing import Memo, SharedTables
from uacregistrant.sip.uri import SipUri, parse_uri, parse_uri_uncached, strip_angle_brackets

#: Largest expiry a REGISTER can carry (RFC 3261 delta-seconds).
MAX_EXPIRES: Final = 2**32 - 1

AccountKey = tuple[str, str, str]

#: The default next hop: none yet (L{Account} parses one).
_NO_HOP: Final = SipUri("", None, None, "", None)


class RowError(ValueError):
    """A table row that cannot be used; C{hint} says how to fix it."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


@dataclass(slots=True, init=False)
class Account:
    """
    An account to keep registered (never changed once made: a changed row
    makes a new one, see L{dataclasses.replace}).

    @ivar key: C{(aor, binding_uri, registrar)}, the table's unique key.
    @ivar forced_socket: the canonical C{TRANSPORT:HOST:PORT} of the socket to
        send from, or C{None} for the first listening socket.
    @ivar next_hop: the parsed proxy, else registrar.  L{account_from_row}
        passes the one from its tables, shared by every account with that
        hop; left out (or not the hop's), it is parsed here.
        L{dataclasses.replace} keeps it while the hop stays the same.
    """

    row_id: int | None = field(compare=False)
    aor: str
    registrar: str
    binding_uri: str
    expiry: int
    enabled: bool
    proxy: str | None
    third_party_registrant: str | None
    username: str | None
    password: str | None = field(repr=False)
    binding_params: str
    forced_socket: str | None
    next_hop: SipUri = field(repr=False, compare=False)

    # Written out, not generated: compiled by mypyc, a written __init__ is
    # native code, where a (frozen) dataclass's generated one stays Python
    # and sets each field through object.__setattr__ (one per table row).
    def __init__(
        self,
        row_id: int | None,
        aor: str,
        registrar: str,
        binding_uri: str,
        expiry: int,
        enabled: bool = True,
        proxy: str | None = None,
        third_party_registrant: str | None = None,
        username: str | None = None,
        password: str | None = None,
        binding_params: str = "",
        forced_socket: str | None = None,
        next_hop: SipUri = _NO_HOP,
    ) -> None:
        self.row_id = row_id
        self.aor = aor
        self.registrar = registrar
        self.binding_uri = binding_uri
        self.expiry = expiry
        self.enabled = enabled
        self.proxy = proxy
        self.third_party_registrant = third_party_registrant
        self.username = username
        self.password = password
        self.binding_params = binding_params
        self.forced_socket = forced_socket
        hop = proxy or registrar
        self.next_hop = next_hop if next_hop.text == hop else parse_uri_uncached(hop)

    def __hash__(self) -> int:
        # Equal accounts have equal keys (C{__eq__} compares the key's fields).
        return hash((self.aor, self.binding_uri, self.registrar))

    @property
    def binding(self) -> SipUri:
        """The binding URI, parsed (on demand: not kept per account, nor in a memo)."""
        return parse_uri_uncached(self.binding_uri)

    @property
    def key(self) -> AccountKey:
        """The unique key C{(aor, binding_uri, registrar)}."""
        return (self.aor, self.binding_uri, self.registrar)

    @property
    def has_credentials(self) -> bool:
        """Whether a username and a password are configured."""
        return bool(self.username) and bool(self.password)


#: What no text column may hold: control characters (CR and LF among
#: them) and lone surrogates (how bytes that are not UTF-8 read).
_BAD_TEXT: Final = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_WHITESPACE: Final = re.compile(r"\s")
#: What a key column may not hold: angle brackets, quotes, whitespace.
_NOT_BARE: Final = re.compile(r'[<>"\s]')
_QUOTED: Final = re.compile(r'"(?:[^"\\]|\\.)*"')
_KEY_HINT: Final = "the daemon finds rows by the key as stored: write it as a bare URI, without <> or surrounding spaces"


def _string(row: Mapping[str, Any], name: str) -> str | None:
    """A column's value as text, or C{None}; refuses what text cannot be."""
    value = row.get(name)
    if value is None or type(value) is str:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RowError(f"{name} is not valid UTF-8", f"store {name} as UTF-8 text") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif not isinstance(value, str):
        raise RowError(f"{name} holds a {type(value).__name__}, not text", f"store {name} as text")
    return value


def _text(row: Mapping[str, Any], name: str) -> str | None:
    """A text column that may reach the wire: stripped, no control characters."""
    return _clean(_string(row, name), name)


def _clean(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    bad = _BAD_TEXT.search(value)
    if bad is not None:
        what = "invalid UTF-8" if 0xD800 <= ord(bad.group()) <= 0xDFFF else f"a control character ({bad.group()!r})"
        raise RowError(
            f"{name} holds {what} at position {bad.start()}",
            f"remove it: CR, LF and other control characters would end a header line of the REGISTER",
        )
    text = value.strip()
    return text or None


def _uri_text(row: Mapping[str, Any], name: str, key: bool = False) -> str | None:
    """A URI column: no whitespace inside; a key column exactly as stored."""
    raw = _string(row, name)
    text = _clean(raw, name)
    if text is None:
        return None
    if key:
        bad = _NOT_BARE.search(text) if raw == text else None
        if raw != text or (bad is not None and not bad.group().isspace()):
            raise RowError(f"{name} {raw!r} is not stored as a bare URI", _KEY_HINT)
        if bad is not None:
            raise RowError(f"{name} {text!r} holds whitespace", f"write {name} as a SIP URI without spaces")
        return text
    try:
        inner = strip_angle_brackets(text)
    except SipParseError:
        inner = text  # an unmatched "<": refused just below
    bad = _NOT_BARE.search(inner)
    if bad is not None:
        what = "whitespace" if bad.group().isspace() else repr(bad.group())
        raise RowError(f"{name} {text!r} holds {what} inside the URI", f"write {name} as one SIP URI, e.g. sip:host;lr")
    return text


def account_from_row(
    row: Mapping[str, Any],
    *,
    default_expires: int,
    timer_interval: int,
    sockets: list[str],
    shared: SharedTables | None = None,
) -> Account:
    """
    Validate one table row (logical column names as keys).

    @param sockets: the canonical names of the listening sockets.
    @param shared: the tables that keep once what accounts repeat (the
        expiry, the parsed registrar and proxy); a service passes its
        own.  Without them nothing is shared (each account its own copy).
    @raise RowError: with the reason and a hint for the operator.
    """
    try:
        return _account_from_row(
            row, default_expires=default_expires, timer_interval=timer_interval, sockets=sockets, shared=shared
        )
    except RowError:
        raise
    except Exception as e:
        # No check foresaw this value: still one row's problem, not the table's.
        raise RowError(
            f"unusable row ({type(e).__name__}: {str(e)[:200]})",
            "check the row's values against the table's schema",
        ) from None


def _account_from_row(
    row: Mapping[str, Any],
    *,
    default_expires: int,
    timer_interval: int,
    sockets: list[str],
    shared: SharedTables | None,
) -> Account:
    uris = shared.uris if shared is not None else None
    row_id = row.get("id")
    # AORs and bindings are one per account: checked without the memo,
    # which they would only fill.
    aor = _key_uri(row, "aor", "set aor to the account's SIP URI, e.g. sip:alice@example.com")
    binding = _key_uri(row, "binding_URI", "set binding_URI to the Contact to register, e.g. sip:alice@192.0.2.1:5060")
    registrar = _key_uri(row, "registrar", "set registrar to the registrar's URI, e.g. sip:example.com", parse=False)
    registrar_uri = _parse_column("registrar", registrar, uris)
    if registrar_uri.user is not None:
        raise RowError(
            f"registrar {registrar!r} has a user part",
            "the registrar is the Request-URI of the REGISTER: write it without user@ (e.g. sip:example.com)",
        )
    proxy = _uri_text(row, "proxy")
    next_hop = registrar_uri
    if proxy:
        try:
            # Without <>, as the hop's text is: one key in the memo however written.
            next_hop = parse_uri(strip_angle_brackets(proxy), uris)
        except SipParseError as e:
            raise RowError(f"unparsable proxy {proxy!r}: {e}", "write proxy as a sip: URI or leave it NULL") from None
        if next_hop.user is not None:
            raise RowError(f"proxy {proxy!r} has a user part", "write the outbound proxy without user@")
        proxy = next_hop.text
    third_party = _uri_text(row, "third_party_registrant")
    if third_party:
        try:
            third_party = parse_uri(strip_angle_brackets(third_party), uris).text
        except SipParseError as e:
            raise RowError(
                f"unparsable third_party_registrant {third_party!r}: {e}",
                "write it as a sip: URI or leave it NULL (From = AOR)",
            ) from None
    params = _text(row, "binding_params") or ""
    if params and not params.startswith(";"):
        params = ";" + params
    try:
        parse_params(params)
    except SipParseError as e:
        raise RowError(f"unparsable binding_params {params!r}: {e}", "write binding_params as ;name=value;flag") from None
    _check_params(params)
    expiry = _expiry(row.get("expiry"), default_expires)
    if expiry <= timer_interval:
        raise RowError(
            f"expiry {expiry} is not longer than timer_interval {timer_interval}",
            f"raise expiry above {timer_interval} or lower --timer-interval",
        )
    forced = _text(row, "forced_socket")
    if forced:
        try:
            forced = normalise_socket(forced)
        except SocketSpecError as e:
            raise RowError(f"invalid forced_socket {forced!r}: {e}", "write it as udp:IP:PORT, tcp:IP:PORT or tls:IP:PORT") from None
        if forced not in sockets:
            raise RowError(
                f"forced_socket {forced} is not a listening socket",
                f"use one of {', '.join(sockets)} or add --listen {forced}",
            )
    state = _whole_number(row.get("state"), "state", "state is 0 (enabled) or another integer (disabled)")
    enabled = state is None or state == 0
    return Account(
        row_id=int(row_id) if isinstance(row_id, int) else None,
        aor=aor,
        registrar=sys.intern(registrar),
        binding_uri=binding,
        expiry=shared.expiries.share(expiry) if shared is not None else expiry,
        enabled=enabled,
        proxy=_shared(proxy),
        third_party_registrant=_shared(third_party),
        username=_text(row, "username"),
        password=_password(row),
        binding_params=sys.intern(params),
        forced_socket=_shared(forced),
        next_hop=next_hop,
    )


def _key_uri(row: Mapping[str, Any], name: str, hint: str, parse: bool = True) -> str:
    """
    A key column's URI, as stored: checked by L{_uri_text} and (unless the
    caller parses it itself) the URI parser, or at once if it is a
    L{_PLAIN_URI}, which both accept.
    """
    value = row.get(name)
    if type(value) is str and _PLAIN_URI.fullmatch(value) is not None:
        return value
    text = _uri_text(row, name, key=True)
    if not text:
        raise RowError(f"empty {name}", hint)
    if parse:
        _parse_column(name, text, None)
    return text


#: The URIs most rows hold (C{sip:user@host:port}, no parameters), in a
#: form whose every match L{parse_uri} accepts and no key check refuses:
#: a user part of RFC 3261 unreserved characters, a host name of letters,
#: digits, dots and dashes, a port of 1 to 59999.  Others take the full
#: checks.
_PLAIN_URI: Final = re.compile(
    r"sips?:(?:[A-Za-z0-9\-_.!~*'()&=+$,%]+@)?[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?(?::(?:[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
)


def _parse_column(column: str, text: str, uris: Memo[str, SipUri] | None) -> SipUri:
    try:
        return parse_uri(text, uris)
    except SipParseError as e:
        raise RowError(f"unparsable {column} {text!r}: {e}", f"write {column} as a sip: or sips: URI") from None


def _shared(text: str | None) -> str | None:
    """One string object for values many accounts repeat (registrar, proxy...)."""
    return None if text is None else sys.intern(text)


#: An unquoted Contact parameter value: a token, or a host (an IPv6 reference included).
_PARAM_VALUE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~\[\]:]+")


def _check_params(params: str) -> None:
    """
    Every binding parameter must be C{name}, C{name=token} or
    C{name="quoted"} (RFC 3261 generic-param): anything else (a comma, an
    angle bracket, a space) would change the Contact header's structure.
    C{params} has passed L{parse_params}.
    """
    unquoted = _QUOTED.sub('""', params)
    if _WHITESPACE.search(unquoted):
        raise RowError(f"binding_params {params!r} holds whitespace outside quotes", "write binding_params as ;name=value;flag, quoting values with spaces")
    for item in unquoted.split(";")[1:]:
        name, eq, value = item.partition("=")
        if name.strip().lower() == "expires":
            raise RowError("binding_params sets expires", "remove it: the expiry column (or --default-expires) sets the Contact's expires")
        if eq and value != '""' and _PARAM_VALUE.fullmatch(value) is None:
            raise RowError(
                f"binding_params {params!r}: {item!r} is neither name=token nor name=\"quoted\"",
                "write binding_params as ;name=value;flag, quoting a value that holds other characters",
            )


def _password(row: Mapping[str, Any]) -> str | None:
    """The password as stored (never rendered: only hashed), or C{None}."""
    text = _string(row, "password")
    if text is not None and _SURROGATE.search(text):
        raise RowError("password is not valid UTF-8", "store the password as UTF-8 text")
    return text if text else None


_SURROGATE: Final = re.compile(r"[\ud800-\udfff]")


def _whole_number(value: Any, name: str, hint: str) -> int | None:
    """
    A whole number as a row may hold it (INTEGER, a REAL with no fraction,
    ASCII digits), or C{None} for NULL or empty.

    @raise RowError: for anything else (C{9e999}, C{nan}, C{"²"}, a blob).
    """
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        number = parse_signed(value.strip())
        if number is not None:
            return number
    raise RowError(f"invalid {name} {str(value)[:40]!r}", hint)


def _expiry(value: Any, default: int) -> int:
    expiry = _whole_number(value, "expiry", "expiry is a whole number of seconds, or NULL for the default")
    if expiry is None:
        return default
    if not 0 < expiry <= MAX_EXPIRES:
        raise RowError(f"expiry {expiry} out of range", f"expiry must be between 1 and {MAX_EXPIRES}")
    return expiry
