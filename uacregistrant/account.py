# -*- test-case-name: tests.unit.test_account -*-
"""
One account as configured in the table, validated.

A table row becomes an L{Account} or raises L{RowError} saying why and how
to fix it; nothing else here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from .sharing import SharedValues
from .sip.errors import SipParseError
from .sip.message import parse_params
from .sip.uri import SipUri, parse_uri, parse_uri_uncached, strip_angle_brackets
from .sockets import SocketSpecError, normalise_socket

#: Largest expiry a REGISTER can carry (RFC 3261 delta-seconds).
MAX_EXPIRES = 2**32 - 1

AccountKey = tuple[str, str, str]


class RowError(ValueError):
    """A table row that cannot be used; C{hint} says how to fix it."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Account:
    """
    An account to keep registered.

    @ivar key: C{(aor, binding_uri, registrar)}, the table's unique key.
    @ivar forced_socket: the canonical C{udp:HOST:PORT} of the socket to
        send from, or C{None} for the first listening socket.
    """

    row_id: int | None
    aor: str
    registrar: str
    binding_uri: str
    expiry: int
    enabled: bool = True
    proxy: str | None = None
    third_party_registrant: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    binding_params: str = ""
    forced_socket: str | None = None
    next_hop: SipUri = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Registrars and proxies are shared by many accounts: parse_uri's
        # cache hands them all the same object.
        object.__setattr__(self, "next_hop", parse_uri(self.proxy or self.registrar))

    @property
    def binding(self) -> SipUri:
        """The binding URI, parsed (on demand: not kept per account)."""
        return parse_uri(self.binding_uri)

    @property
    def key(self) -> AccountKey:
        """The unique key C{(aor, binding_uri, registrar)}."""
        return (self.aor, self.binding_uri, self.registrar)

    @property
    def has_credentials(self) -> bool:
        """Whether a username and a password are configured."""
        return bool(self.username) and bool(self.password)


def _text(row: Mapping[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip()
    return text or None


def account_from_row(
    row: Mapping[str, Any],
    *,
    default_expires: int,
    timer_interval: int,
    sockets: list[str],
) -> Account:
    """
    Validate one table row (logical column names as keys).

    @param sockets: the canonical names of the listening sockets.
    @raise RowError: with the reason and a hint for the operator.
    """
    row_id = row.get("id")
    aor = _text(row, "aor")
    registrar = _text(row, "registrar")
    binding = _text(row, "binding_URI")
    if not aor:
        raise RowError("empty aor", "set aor to the account's SIP URI, e.g. sip:alice@example.com")
    if not registrar:
        raise RowError("empty registrar", "set registrar to the registrar's URI, e.g. sip:example.com")
    if not binding:
        raise RowError("empty binding_URI", "set binding_URI to the Contact to register, e.g. sip:alice@192.0.2.1:5060")
    for column, text in (("aor", aor), ("registrar", registrar), ("binding_URI", binding)):
        try:
            # AORs and bindings are one per account: checked without the
            # parse cache, which they would only churn.
            (parse_uri if column == "registrar" else parse_uri_uncached)(text)
        except SipParseError as e:
            raise RowError(f"unparsable {column} {text!r}: {e}", f"write {column} as a sip: or sips: URI") from None
    registrar = strip_angle_brackets(registrar)
    if parse_uri(registrar).user is not None:
        raise RowError(
            f"registrar {registrar!r} has a user part",
            "the registrar is the Request-URI of the REGISTER: write it without user@ (e.g. sip:example.com)",
        )
    proxy = _text(row, "proxy")
    if proxy:
        try:
            proxy_uri = parse_uri(proxy)
        except SipParseError as e:
            raise RowError(f"unparsable proxy {proxy!r}: {e}", "write proxy as a sip: URI or leave it NULL") from None
        if proxy_uri.user is not None:
            raise RowError(f"proxy {proxy!r} has a user part", "write the outbound proxy without user@")
        proxy = strip_angle_brackets(proxy)
    third_party = _text(row, "third_party_registrant")
    if third_party:
        try:
            parse_uri(third_party)
        except SipParseError as e:
            raise RowError(
                f"unparsable third_party_registrant {third_party!r}: {e}",
                "write it as a sip: URI or leave it NULL (From = AOR)",
            ) from None
        third_party = strip_angle_brackets(third_party)
    params = _text(row, "binding_params") or ""
    if params and not params.startswith(";"):
        params = ";" + params
    try:
        parse_params(params)
    except SipParseError as e:
        raise RowError(f"unparsable binding_params {params!r}: {e}", "write binding_params as ;name=value;flag") from None
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
            raise RowError(f"invalid forced_socket {forced!r}: {e}", "write it as udp:IP:PORT") from None
        if forced not in sockets:
            raise RowError(
                f"forced_socket {forced} is not a listening socket",
                f"use one of {', '.join(sockets)} or add --listen {forced}",
            )
    state = row.get("state")
    try:
        enabled = state is None or int(state) == 0
    except (TypeError, ValueError):
        raise RowError(f"invalid state {state!r}", "state is 0 (enabled) or another integer (disabled)") from None
    return Account(
        row_id=int(row_id) if isinstance(row_id, int) else None,
        aor=strip_angle_brackets(aor),
        registrar=sys.intern(registrar),
        binding_uri=strip_angle_brackets(binding),
        expiry=_EXPIRIES.share(expiry),
        enabled=enabled,
        proxy=_shared(proxy),
        third_party_registrant=_shared(third_party),
        username=_text(row, "username"),
        password=_password(row.get("password")),
        binding_params=sys.intern(params),
        forced_socket=_shared(forced),
    )


#: One object per distinct expiry value (most accounts share a few).
_EXPIRIES: SharedValues[int] = SharedValues()


def _shared(text: str | None) -> str | None:
    """One string object for values many accounts repeat (registrar, proxy...)."""
    return None if text is None else sys.intern(text)


def _password(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value) if value not in (None, "") else None


def _expiry(value: Any, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        expiry = int(value)
    except (TypeError, ValueError):
        raise RowError(f"invalid expiry {value!r}", "expiry is a whole number of seconds, or NULL for the default") from None
    if not 0 < expiry <= MAX_EXPIRES:
        raise RowError(f"expiry {expiry} out of range", f"expiry must be between 1 and {MAX_EXPIRES}")
    return expiry
