"""Tests for L{uacregistrant.sip.digest}."""

import hashlib
import re

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.sip.digest import (
    TEMPLATE_LENGTH_MAX,
    TEMPLATE_PARAMS_MAX,
    _AUTH_ITEM,
    Challenge,
    ChallengeTemplate,
    Credentials,
    authorization_value,
    choose_challenge,
    compute_response,
    parse_authorization,
    parse_challenges,
    verify_authorization,
)
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.sharing import Memo, SharedValues

# RFC 7616 §3.9.1
RFC_CHALLENGE = {
    "realm": "http-auth@example.org",
    "qop": "auth, auth-int",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
}
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
MUFASA = Credentials("Mufasa", "Circle of Life")


class VectorTests(SynchronousTestCase):
    def test_rfc7616_md5(self) -> None:
        """The RFC 7616 MD5 example response."""
        challenge = Challenge("Digest", dict(RFC_CHALLENGE, algorithm="MD5"))
        response, qop = compute_response(challenge, MUFASA, "GET", "/dir/index.html", RFC_CNONCE, 1)
        self.assertEqual((response, qop), ("8ca523f5e9506fed4657c9700eebdbec", "auth"))

    def test_builtin_md5_is_md5(self) -> None:
        """The MD5 used (CPython's own where it has one) gives hashlib's digest, for empty to long inputs."""
        import importlib.util

        from uacregistrant.sip import digest

        if importlib.util.find_spec("_md5") is not None:
            self.assertIsNot(digest._MD5, hashlib.md5)
        for data in (b"", b"u:r:p", bytes(range(256)) * 5):
            self.assertEqual(digest._MD5(data).hexdigest(), hashlib.md5(data).hexdigest())

    def test_md5_refused_by_hashlib_stays_refused(self) -> None:
        """Where hashlib refuses MD5 (OpenSSL in FIPS mode), the digest does not get around it with CPython's own."""
        from uacregistrant.sip import digest

        def refused(data: bytes = b"") -> object:
            raise ValueError("[digital envelope routines] unsupported")

        self.patch(hashlib, "md5", refused)
        self.assertIs(digest._builtin_md5(), refused)

    def test_rfc7616_sha256(self) -> None:
        """The RFC 7616 SHA-256 example response."""
        challenge = Challenge("Digest", dict(RFC_CHALLENGE, algorithm="SHA-256"))
        response, _ = compute_response(challenge, MUFASA, "GET", "/dir/index.html", RFC_CNONCE, 1)
        self.assertEqual(response, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")

    def test_sha512_256_sess_by_hand(self) -> None:
        """SHA-512-256-sess follows RFC 7616 §3.4.2 (computed independently)."""
        h = lambda s: hashlib.new("sha512_256", s.encode()).hexdigest()  # noqa: E731
        challenge = Challenge("Digest", {"realm": "r", "nonce": "n", "qop": "auth", "algorithm": "SHA-512-256-sess"})
        ha1 = h(f"{h('u:r:p')}:n:c")
        expected = h(f"{ha1}:n:00000002:c:auth:{h('REGISTER:sip:x')}")
        self.assertEqual(compute_response(challenge, Credentials("u", "p"), "REGISTER", "sip:x", "c", 2)[0], expected)

    def test_rfc2069_and_auth_int(self) -> None:
        """No qop gives the RFC 2069 form; auth-int hashes the (empty) body."""
        md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
        plain = Challenge("Digest", {"realm": "r", "nonce": "n"})
        self.assertEqual(
            compute_response(plain, Credentials("u", "p"), "REGISTER", "sip:x", "c", 1),
            (md5(f"{md5('u:r:p')}:n:{md5('REGISTER:sip:x')}"), None),
        )
        integrity = Challenge("Digest", {"realm": "r", "nonce": "n", "qop": "auth-int"})
        ha2 = md5(f"REGISTER:sip:x:{hashlib.md5(b'').hexdigest()}")
        self.assertEqual(
            compute_response(integrity, Credentials("u", "p"), "REGISTER", "sip:x", "c", 1),
            (md5(f"{md5('u:r:p')}:n:00000001:c:auth-int:{ha2}"), "auth-int"),
        )

    def test_ha1_password(self) -> None:
        """A 0x<hex> secret is used as HA1, for its own algorithm only."""
        ha1 = hashlib.md5(b"u:r:p").hexdigest()
        challenge = Challenge("Digest", {"realm": "r", "nonce": "n", "qop": "auth"})
        self.assertEqual(
            compute_response(challenge, Credentials("u", "0x" + ha1.upper()), "REGISTER", "sip:x", "c", 1),
            compute_response(challenge, Credentials("u", "p"), "REGISTER", "sip:x", "c", 1),
        )
        self.assertFalse(Credentials("u", "0x" + ha1).can_answer("SHA-256"))
        self.assertTrue(Credentials("u", "0xnothex").can_answer("SHA-256"))


class ParseTests(SynchronousTestCase):
    def test_several_challenges_in_one_header(self) -> None:
        """Quoted commas and escapes survive; a bare token starts a new challenge."""
        challenges = parse_challenges(
            'Digest realm="a,b", nonce="x\\"y", qop="auth", Digest realm="r", nonce=n2, algorithm=SHA-256, stale=TRUE'
        )
        self.assertEqual([c.params["realm"] for c in challenges], ["a,b", "r"])
        self.assertEqual(challenges[0].nonce, 'x"y')
        self.assertEqual((challenges[1].algorithm, challenges[1].stale), ("SHA-256", True))
        self.assertEqual(challenges[0].qop_options, ["auth"])

    def test_malformed(self) -> None:
        """Unterminated quotes raise the codec's error."""
        with self.assertRaises(SipParseError):
            parse_challenges('Digest realm="abc')

    def test_choose_topmost_supported(self) -> None:
        """The topmost challenge with a supported algorithm wins."""
        challenges = [
            Challenge("Digest", {"nonce": "1", "algorithm": "AKAv1-MD5"}),
            Challenge("Basic", {"realm": "x"}),
            Challenge("Digest", {"nonce": "2", "algorithm": "SHA-256"}),
            Challenge("Digest", {"nonce": "3", "algorithm": "MD5"}),
        ]
        self.assertEqual(choose_challenge(challenges, Credentials("u", "p")), challenges[2])
        self.assertEqual(choose_challenge(challenges, Credentials("u", "0x" + "a" * 32)), challenges[3])
        self.assertIsNone(choose_challenge(challenges[:2], Credentials("u", "p")))


class RoundTripTests(SynchronousTestCase):
    def test_answer_verifies(self) -> None:
        """A rendered answer verifies with the right password only, and echoes opaque."""
        for algorithm in ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "SHA-512-256", "SHA-512-256-sess"]:
            challenge = Challenge("Digest", {"realm": "r", "nonce": "n", "qop": "auth", "opaque": "o", "algorithm": algorithm})
            value = authorization_value(challenge, Credentials('we"ird', "pw"), "REGISTER", "sip:reg", "cn", 3)
            params = parse_authorization(value)
            self.assertEqual((params["username"], params["opaque"], params["nc"]), ('we"ird', "o", "00000003"))
            self.assertTrue(verify_authorization(params, "pw", "REGISTER"), algorithm)
            self.assertFalse(verify_authorization(params, "other", "REGISTER"), algorithm)
            self.assertNotIn("pw", value)


class SharedTextTests(SynchronousTestCase):
    def test_kept_challenges_share_repeated_text(self) -> None:
        """Realm, qop, algorithm and names are kept once across challenges; nonces are each their own."""
        shared: SharedValues[str] = SharedValues()
        first, second = (
            parse_challenges(f'Digest realm="shared.test", nonce="{n}", qop="auth", algorithm=MD5', shared=shared)[0]
            for n in ("n1", "n2")
        )
        self.assertEqual(first.params, {"realm": "shared.test", "nonce": "n1", "qop": "auth", "algorithm": "MD5"})
        self.assertIs(first.params["realm"], second.params["realm"])
        self.assertIs(first.params["qop"], second.params["qop"])
        self.assertIs(first.scheme, second.scheme)
        self.assertEqual(second.nonce, "n2")
        self.assertNotIn("n1", shared)
        self.assertIn("shared.test", shared)

    def test_nothing_shared_without_a_table(self) -> None:
        """Without a table, each parse has its own text: nothing is kept between calls."""
        text = 'Digest realm="{}", nonce="n", qop="auth"'
        first = parse_challenges(text.format("".join(["alone", ".test"])))[0]
        second = parse_challenges(text.format("".join(["alone.", "test"])))[0]
        self.assertEqual(first.realm, second.realm)
        self.assertIsNot(first.realm, second.realm)

    def test_long_values_not_shared(self) -> None:
        """A realm longer than 256 characters is parsed but not kept."""
        shared: SharedValues[str] = SharedValues()
        challenge = parse_challenges(f'Digest realm="{"r" * 300}", nonce="n"', shared=shared)[0]
        self.assertEqual(len(challenge.realm), 300)
        self.assertEqual(len(shared), 3)  # "Digest", "realm", "nonce"
        self.assertNotIn(challenge.realm, shared)


class ChallengeScannerTests(SynchronousTestCase):
    """The challenge scanner's regular expression, rewritten for speed, matches what the plain one matched."""

    #: The expression as first written: one alternation per quoted character.
    PLAIN = re.compile(r'[\s,]*([^\s=,"]+)[ \t]*(?:=[ \t]*("(?:[^"\\]|\\.)*"|[^\s,"]*))?')

    @settings(max_examples=2000, deadline=None)
    @given(st.text(alphabet='ab=", \\\t\r\n\u00a0\u2028é', max_size=40), st.integers(0, 40))
    def test_same_matches(self, text: str, pos: int) -> None:
        plain, fast = self.PLAIN.match(text, pos), _AUTH_ITEM.match(text, pos)
        self.assertEqual(plain is None, fast is None)
        if plain is not None and fast is not None:
            self.assertEqual((plain.span(), plain.groups()), (fast.span(), fast.groups()))


def reference_response(
    challenge: Challenge, credentials: Credentials, method: str, uri: str, cnonce: str, nc: int, body: bytes
) -> tuple[str, str | None]:
    """RFC 7616 §3.4.1 as plainly as it reads: what compute_response must give."""
    algorithm = challenge.params.get("algorithm", "MD5").upper()
    session = algorithm.endswith("-SESS")
    base = algorithm[:-5] if session else algorithm
    names = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}
    if base not in names:
        raise SipParseError("unsupported")

    def h(data: str | bytes) -> str:
        return hashlib.new(names[base], data.encode() if isinstance(data, str) else data).hexdigest()

    secret = credentials.secret
    if secret[:2] in ("0x", "0X") and len(secret) - 2 in (32, 64) and all(c in "0123456789abcdefABCDEF" for c in secret[2:]):
        if len(secret) - 2 != (32 if base == "MD5" else 64):
            raise SipParseError("HA1 of another length")
        ha1 = secret[2:].lower()
    else:
        ha1 = h(f"{credentials.username}:{challenge.params.get('realm', '')}:{secret}")
    nonce = challenge.params.get("nonce", "")
    if session:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    offered = [q.strip().lower() for q in challenge.params.get("qop", "").split(",") if q.strip()]
    qop = "auth" if "auth" in offered else "auth-int" if "auth-int" in offered else None
    ha2 = h(f"{method}:{uri}:{h(body)}") if qop == "auth-int" else h(f"{method}:{uri}")
    if qop is None:
        return h(f"{ha1}:{nonce}:{ha2}"), None
    return h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}"), qop


class ComputeResponseTests(SynchronousTestCase):
    """compute_response, written for speed, gives what RFC 7616 reads as."""

    @settings(max_examples=1500, deadline=None)
    @given(
        st.sampled_from(
            ["MD5", "md5", "MD5-sess", "SHA-256", "sha-256-SESS", "SHA-512-256", "SHA-512-256-sess"]
            + ["SHA-1", "-SESS", "MD5-SESS-SESS", None]
        ),
        st.sampled_from([None, "auth", "AUTH", "auth-int", "auth,auth-int", " auth-int , auth ", "auth-int,token", "", ",", "other"]),
        st.sampled_from(["secret", "0x" + "a" * 32, "0X" + "B" * 64, "0x" + "g" * 32, "0x12"]),
        st.binary(max_size=8),
        st.integers(1, 2**32 - 1),
    )
    def test_as_the_rfc_reads(self, algorithm: str | None, qop: str | None, secret: str, body: bytes, nc: int) -> None:
        params = {"realm": "r", "nonce": "n0nce"}
        if algorithm is not None:
            params["algorithm"] = algorithm
        if qop is not None:
            params["qop"] = qop
        challenge, credentials = Challenge("Digest", params), Credentials("u", secret)
        outcomes = []
        for compute in (compute_response, reference_response):
            try:
                outcomes.append(compute(challenge, credentials, "REGISTER", "sip:r", "c", nc, body))
            except SipParseError:
                outcomes.append(None)
        self.assertEqual(outcomes[0], outcomes[1])
        if outcomes[0] is not None:
            self.assertEqual(credentials.can_answer(challenge.algorithm), True)


class ChallengeTemplateTests(SynchronousTestCase):
    """Headers answered from a kept template parse exactly as the parser reads them."""

    #: Header shapes with {} where the nonce goes; some qualify for a template, some must not be fooled.
    SHAPES = [
        'Digest realm="r", nonce="{}", qop="auth", algorithm=MD5',
        'Digest realm="r", nonce="{}", opaque="o", qop="auth"',
        'Digest realm="r",nonce="{}"',
        'Basic realm="b", Digest realm="r", nonce="{}"',
        'Digest realm="a, nonce=\\"x\\"", nonce="{}"',
        'Digest realm="nonce=\\"{}\\"", qop="auth"',
        'Digest realm="q", xnonce="{}"',
        'Digest nonce="{}", NONCE="fixed"',
        'Digest NONCE="fixed", nonce="{}"',
        'Digest realm="r" nonce="{}" qop=auth',
        'Digest realm="r", nonce="{}", stale=true',
        'Digest realm="{}", nonce="n"',
        'Digest realm="r nonce="{}", qop="auth"',
        'Digest realm="r", opaque="nonce="{}", qop="x"',
        'Digest realm="r", nonce="{}"x, qop="auth"',
    ]

    @settings(max_examples=800, deadline=None)
    @given(
        st.sampled_from(SHAPES),
        st.lists(st.text(alphabet='ab0, =;\t"\\é', max_size=12), min_size=1, max_size=4),
    )
    @example('Digest nonce="{}", NONCE="fixed"', ["fixed", "other"])
    @example('Digest NONCE="fixed", nonce="{}"', ["fixed", "other"])
    @example('Digest realm="r nonce="{}", qop="auth"', ["a", "b"])
    def test_same_as_the_parser(self, shape: str, nonces: list[str]) -> None:
        templates: Memo[str, ChallengeTemplate] = Memo()
        for nonce in nonces:
            value = shape.replace("{}", nonce)
            try:
                expected = parse_challenges(value)
            except SipParseError:
                with self.assertRaises(SipParseError):
                    parse_challenges(value, templates=templates)
                continue
            got = parse_challenges(value, templates=templates)
            self.assertEqual([(c.scheme, list(c.params.items())) for c in got], [(c.scheme, list(c.params.items())) for c in expected])

    def test_second_header_from_the_template(self) -> None:
        """A registrar's next 401 (another nonce) is answered from the template: the same values, new objects."""
        templates: Memo[str, ChallengeTemplate] = Memo()
        first = parse_challenges('Digest realm="realm.test", nonce="n1", qop="auth"', templates=templates)
        self.assertEqual(len(templates), 1)
        second = parse_challenges('Digest realm="realm.test", nonce="n2", qop="auth"', templates=templates)
        self.assertEqual((second[0].params["nonce"], second[0].params["realm"]), ("n2", "realm.test"))
        self.assertEqual(first[0].params["nonce"], "n1")
        self.assertIsNot(first[0].params, second[0].params)
        # Not parsed again (in either build): a parse makes a new realm string, the template hands out its own.
        self.assertIs(second[0].params["realm"], first[0].params["realm"])
        self.assertIsNot(parse_challenges('Digest realm="realm.test", nonce="n3", qop="auth"')[0].params["realm"], first[0].params["realm"])

    def test_only_plain_headers_kept(self) -> None:
        """Headers with a backslash, two nonces, several challenges, or over the length or parameter count are parsed, never kept."""
        templates: Memo[str, ChallengeTemplate] = Memo()
        for value in (
            'Digest realm="a\\\\b", nonce="n"',
            'Digest nonce="n1", Digest nonce="n2"',
            'Digest realm="' + "r" * TEMPLATE_LENGTH_MAX + '", nonce="n"',
            "A," * 500 + 'Digest nonce="x"',  # 501 challenges: a template would hold them all
            "Digest " + ", ".join(f"p{i}=v" for i in range(TEMPLATE_PARAMS_MAX)) + ', nonce="n"',
        ):
            parse_challenges(value, templates=templates)
        self.assertEqual(len(templates), 0)
