# -*- test-case-name: tests.unit.sip.test_digest,tests.unit.core.test_registrant,tests.unit.sip.test_sharing -*-
"""
HTTP digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760).

Challenge parsing and credential computation; the caller supplies the
cnonce, so everything here is deterministic and free of I/O.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Final

from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.message import is_token, quote_string, unquote_string
from uacregistrant.sip.numbers import is_hex
from uacregistrant.sip.sharing import Memo, SharedValues


def _builtin_md5() -> Callable[[bytes], Any]:
    """
    CPython's own MD5 where it has one: on a short input (every digest
    input is one) it takes half the time of OpenSSL's, which sets up a
    context for each hash.  The same digest either way.  Where hashlib
    refuses MD5 (an OpenSSL in FIPS mode), hashlib's, which refuses it
    still: that policy is not for this module to get around.
    """
    try:
        hashlib.md5(b"")
    except ValueError:
        return hashlib.md5
    try:
        md5: Callable[[bytes], Any] = importlib.import_module("_md5").md5
    except (ImportError, AttributeError):
        return hashlib.md5
    return md5


_MD5: Final = _builtin_md5()
_HASHES: Final[dict[str, Callable[[bytes], str]]] = {
    "MD5": lambda data: _MD5(data).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
    "SHA-512-256": lambda data: hashlib.new("sha512_256", data).hexdigest(),
}
_HEX_LENGTH: Final = {"MD5": 32, "SHA-256": 64, "SHA-512-256": 64}


@dataclass(slots=True, init=False)
class Challenge:
    """
    One challenge from a WWW-Authenticate or Proxy-Authenticate header.

    Not frozen, C{__init__} written out: compiled, a dataclass's generated
    C{__init__} stays interpreted (this one is made for every answer).
    """

    scheme: str
    params: dict[str, str]

    def __init__(self, scheme: str, params: dict[str, str]) -> None:
        self.scheme = scheme
        self.params = params

    @property
    def realm(self) -> str:
        """The realm (empty if absent)."""
        return self.params.get("realm", "")

    @property
    def nonce(self) -> str:
        """The nonce (empty if absent)."""
        return self.params.get("nonce", "")

    @property
    def algorithm(self) -> str:
        """The algorithm, upper-cased; MD5 when absent (RFC 7616 §3.3)."""
        return self.params.get("algorithm", "MD5").upper()

    @property
    def qop_options(self) -> list[str]:
        """The qop options offered, lower-cased."""
        return [q.strip().lower() for q in self.params.get("qop", "").split(",") if q.strip()]

    @property
    def stale(self) -> bool:
        """Whether the challenge says C{stale=true}."""
        return self.params.get("stale", "").lower() == "true"

    @property
    def is_digest(self) -> bool:
        """Whether this is a Digest challenge with a nonce."""
        return self.scheme.lower() == "digest" and bool(self.nonce)

    def layout(self) -> "ChallengeLayout":
        """What this challenge has in common with its registrar's others (see L{ChallengeLayout})."""
        return ChallengeLayout(self.scheme, tuple(item for item in self.params.items() if item[0] not in _NOT_IN_LAYOUT))


@dataclass(slots=True, init=False)
class ChallengeLayout:
    """
    A challenge without its nonce and opaque: the scheme and the other
    parameters (realm, qop, algorithm...), which all the challenges of one
    registrar repeat.  Hashable: a service keeps one per distinct layout
    (L{uacregistrant.sip.sharing.SharedTables.layouts}), so a record that
    keeps its challenge for credentials up front holds only its nonce (and
    opaque) of its own.  C{stale} is left out: it concerns the response
    that carried it, never the answers to come.

    C{__init__}, C{__eq__} and C{__hash__} are written out (native when
    compiled): one is made, hashed and compared for every 401.
    """

    scheme: str
    params: tuple[tuple[str, str], ...]

    def __init__(self, scheme: str, params: tuple[tuple[str, str], ...]) -> None:
        self.scheme = scheme
        self.params = params

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChallengeLayout):
            return NotImplemented
        return self.scheme == other.scheme and self.params == other.params

    def __hash__(self) -> int:
        return hash((self.scheme, self.params))

    def challenge(self, nonce: str, opaque: str | None = None) -> Challenge:
        """The challenge again, with this C{nonce} (and C{opaque})."""
        params = dict(self.params)
        params["nonce"] = nonce
        if opaque is not None:
            params["opaque"] = opaque
        return Challenge(self.scheme, params)


# One auth-param or scheme token: NAME [= (quoted-string | token)] [,].
# The quoted-string is written unrolled ("[^"\\]*(?:\\.[^"\\]*)*"), the
# same language as "(?:[^"\\]|\\.)*" at a third of the cost in re's engine
# (one alternation per character there: 5.0 -> 2.2 us for a registrar's
# challenge of five parameters).
_AUTH_ITEM: Final = re.compile(r'[\s,]*([^\s=,"]+)[ \t]*(?:=[ \t]*("[^"\\]*(?:\\.[^"\\]*)*"|[^\s,"]*))?')
#: Scheme and parameter names registrars send, tokens without a look.
_KNOWN_TOKENS: Final = frozenset(
    ["Digest", "digest", "realm", "nonce", "opaque", "qop", "algorithm", "stale", "domain", "charset", "userhash"]
)


#: Parameters that differ per challenge: never shared.
_UNIQUE_PARAMS: Final = frozenset({"nonce", "opaque"})
#: Parameters a L{ChallengeLayout} leaves out.
_NOT_IN_LAYOUT: Final = _UNIQUE_PARAMS | {"stale"}
#: Longer values are not kept in the shared table (a registrar inventing
#: 60 KB realms must not fill it with them).
_SHARED_LENGTH_MAX: Final = 256


class ChallengeTemplate:
    """
    What a challenge header of one challenge parsed to, kept to answer the
    same header with another nonce (L{parse_challenges}' C{templates}).
    """

    __slots__ = ("scheme", "params")

    def __init__(self, scheme: str, params: dict[str, str]) -> None:
        self.scheme = scheme
        self.params = params

    def fill(self, nonce: str) -> list[Challenge]:
        """The challenge again (a new object, its own parameters), with C{nonce}."""
        params = dict(self.params)
        params["nonce"] = nonce
        return [Challenge(self.scheme, params)]


#: A longer challenge header is parsed each time, never kept as a template.
TEMPLATE_LENGTH_MAX: Final = 1024
#: Nor one with more parameters (or more than one challenge): what a
#: template holds stays within a few KB, 1024 of them within a few MB.
TEMPLATE_PARAMS_MAX: Final = 16


def _nonce_span(value: str) -> tuple[int, int] | None:
    """
    Where the value of the header's nonce starts and ends, if the header is
    plain enough to find it without the parser: at most
    L{TEMPLATE_LENGTH_MAX} characters, no backslash, "nonce" once in any
    case, written C{nonce="...} right after a separator and outside any
    quoted string.  Every character the nonce's value may hold is then
    inert to the parser (no quote, no backslash): two such headers that
    differ only there parse alike but for the nonce.
    """
    if len(value) > TEMPLATE_LENGTH_MAX or "\\" in value or value.lower().count("nonce") != 1:
        return None
    start = value.find('nonce="')
    if start <= 0 or value[start - 1] not in " ,\t" or value.count('"', 0, start) % 2:
        return None
    start += 7
    end = value.find('"', start)
    return None if end == -1 else (start, end)


def parse_challenges(
    value: str, *, shared: SharedValues[str] | None = None, templates: Memo[str, ChallengeTemplate] | None = None
) -> list[Challenge]:
    """
    Parse a WWW-Authenticate/Proxy-Authenticate value into challenges.

    One header may carry several challenges; a bare token that is not
    followed by C{=} starts a new one.

    @param shared: where kept challenges (one per registered record) get
        their repeated text: the scheme, the parameter names and most
        values (realm, qop, algorithm, up to 256 characters) come back
        as the first equal object C{shared} saw; nonces and opaques,
        different each time, are left alone.  A service passes its
        C{SharedTables.text}; without it nothing is shared (a registrar
        reading one answer, a test).
    @param templates: parses kept by the header's text without its nonce
        (a service's C{SharedTables.challenges}): a registrar's 401s
        repeat all but the nonce, and a header found there is not parsed
        again (see L{_nonce_span} for which headers qualify; a template is
        kept only for a header of one challenge of at most
        L{TEMPLATE_PARAMS_MAX} parameters, whose nonce the parser read
        where L{_nonce_span} did).
    """
    span = _nonce_span(value) if templates is not None else None
    if span is None or templates is None:
        return _parse_challenges(value, shared)
    start, end = span
    key = value[:start] + value[end:]
    template = templates.get(key)
    if template is not None:
        return template.fill(value[start:end])
    challenges = _parse_challenges(value, shared)
    if len(challenges) == 1:
        only = challenges[0]
        if len(only.params) <= TEMPLATE_PARAMS_MAX and only.params.get("nonce") == value[start:end]:
            templates.keep(key, ChallengeTemplate(only.scheme, dict(only.params)))
    return challenges


def _parse_challenges(value: str, shared: SharedValues[str] | None) -> list[Challenge]:
    share = shared.share if shared is not None else _as_is
    challenges: list[Challenge] = []
    scheme: str | None = None
    params: dict[str, str] = {}
    pos = 0
    end = len(value.rstrip(" \t,"))
    while pos < end:
        match = _AUTH_ITEM.match(value, pos)
        if match is None or match.end() == pos:
            raise SipParseError(f"invalid challenge near {value[pos:pos + 40]!r}")
        pos = match.end()
        token, param = match.group(1, 2)
        if token not in _KNOWN_TOKENS and not is_token(token):
            raise SipParseError(f"invalid token {token!r} in challenge")
        if param is None:
            if scheme is not None:
                challenges.append(Challenge(scheme, params))
            scheme, params = share(token), {}
            continue
        if scheme is None:
            raise SipParseError("auth-param before the scheme")
        name = share(token.lower())
        text = unquote_string(param) if param.startswith('"') else param
        params[name] = text if name in _UNIQUE_PARAMS or len(text) > _SHARED_LENGTH_MAX else share(text)
    if scheme is not None:
        challenges.append(Challenge(scheme, params))
    return challenges


def _as_is(text: str) -> str:
    return text


@dataclass(slots=True, init=False)
class Credentials:
    """
    A username and a secret: a password, or an HA1 written C{0x<hex>}.

    The secret never appears in C{repr}.
    """

    username: str
    secret: str

    def __init__(self, username: str, secret: str) -> None:
        self.username = username
        self.secret = secret

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, secret=<hidden>)"

    @property
    def ha1_hex(self) -> str | None:
        """The HA1 if the secret is written C{0x<hex>}, else C{None}."""
        s = self.secret
        if len(s) - 2 in (32, 64) and s[:2] in ("0x", "0X") and is_hex(s[2:]):
            return s[2:].lower()
        return None

    def can_answer(self, algorithm: str) -> bool:
        """Whether these credentials can answer a challenge of C{algorithm}."""
        return _hash_for(_base(algorithm.upper()), self.ha1_hex) is not None


def _base(algorithm: str) -> str:
    return algorithm[:-5] if algorithm.endswith("-SESS") else algorithm


def _hash_for(base: str, ha1: str | None) -> Callable[[bytes], str] | None:
    """The hash of algorithm C{base} (upper-case, without -SESS), if credentials with this HA1 (or none) can answer it."""
    digest = _HASHES.get(base)
    if digest is None or (ha1 is not None and len(ha1) != _HEX_LENGTH[base]):
        return None
    return digest


def choose_challenge(challenges: list[Challenge], credentials: Credentials) -> Challenge | None:
    """The topmost Digest challenge these credentials can answer."""
    for challenge in challenges:
        if challenge.is_digest and credentials.can_answer(challenge.algorithm):
            return challenge
    return None


def compute_response(
    challenge: Challenge,
    credentials: Credentials,
    method: str,
    uri: str,
    cnonce: str,
    nc: int,
    body: bytes = b"",
) -> tuple[str, str | None]:
    """
    Compute the digest response.

    (Written for the compiled build: the challenge's properties inline,
    the HA1 looked at once.)

    @return: C{(response, qop)}, qop being C{None} for an RFC 2069 answer.
    @raise SipParseError: if these credentials cannot answer the algorithm.
    """
    params = challenge.params
    algorithm = params.get("algorithm", "MD5").upper()
    session = algorithm.endswith("-SESS")
    ha1 = credentials.ha1_hex
    digest = _hash_for(algorithm[:-5] if session else algorithm, ha1)
    if digest is None:
        raise SipParseError(f"cannot answer algorithm {algorithm}")
    nonce = params.get("nonce", "")
    if ha1 is None:
        ha1 = digest(f"{credentials.username}:{params.get('realm', '')}:{credentials.secret}".encode())
    if session:
        ha1 = digest(f"{ha1}:{nonce}:{cnonce}".encode())
    offered = params.get("qop")
    qop: str | None = None
    if offered == "auth":
        qop = offered
    elif offered is not None:
        options = [option.strip() for option in offered.lower().split(",")]
        qop = "auth" if "auth" in options else "auth-int" if "auth-int" in options else None
    if qop == "auth-int":
        ha2 = digest(f"{method}:{uri}:{digest(body)}".encode())
    else:
        ha2 = digest(f"{method}:{uri}".encode())
    if qop is None:
        return digest(f"{ha1}:{nonce}:{ha2}".encode()), None
    return digest(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}".encode()), qop


def authorization_value(
    challenge: Challenge,
    credentials: Credentials,
    method: str,
    uri: str,
    cnonce: str,
    nc: int,
    body: bytes = b"",
) -> str:
    """The value of an Authorization/Proxy-Authorization header."""
    response, qop = compute_response(challenge, credentials, method, uri, cnonce, nc, body)
    params = challenge.params
    value = (
        f"Digest username={quote_string(credentials.username)}, realm={quote_string(params.get('realm', ''))}, "
        f"nonce={quote_string(params.get('nonce', ''))}, uri={quote_string(uri)}, response=\"{response}\", "
        f"algorithm={params.get('algorithm', 'MD5')}"
    )
    if qop is not None:
        value += f", qop={qop}, nc={nc:08x}, cnonce={quote_string(cnonce)}"
    opaque = params.get("opaque")
    if opaque is not None:
        value += f", opaque={quote_string(opaque)}"
    return value


def parse_authorization(value: str) -> dict[str, str]:
    """Parse an Authorization value into its parameters (for registrars)."""
    challenges = parse_challenges(value)
    if len(challenges) != 1 or challenges[0].scheme.lower() != "digest":
        raise SipParseError("not a single Digest credential")
    return challenges[0].params


def verify_authorization(
    params: dict[str, str],
    password: str,
    method: str,
    body: bytes = b"",
) -> bool:
    """
    Check a client's digest answer against C{password} (registrar side).

    The challenge parameters come from the answer itself; the caller
    checks that the nonce is one it issued.
    """
    try:
        challenge = Challenge(
            "Digest",
            {
                "realm": params["realm"],
                "nonce": params["nonce"],
                "algorithm": params.get("algorithm", "MD5"),
                **({"qop": params["qop"]} if "qop" in params else {}),
            },
        )
        nc_text = params.get("nc", "1")
        if not is_hex(nc_text) or len(nc_text) > 8:
            return False
        nc = int(nc_text, 16)
        expected, _ = compute_response(
            challenge,
            Credentials(params["username"], password),
            method,
            params["uri"],
            params.get("cnonce", ""),
            nc,
            body,
        )
    except (KeyError, ValueError):
        return False
    return expected == params.get("response", "").lower()
