"""Tests for L{uacregistrant.core.registrant}: the pure state machine."""

import random

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.build import COMPILED, PURE_ONLY
from uacregistrant.core.account import Account
from uacregistrant.core.registrant import (
    AT_REST,
    IN_TRANSACTION,
    MAX_FOLLOW_UPS,
    TRANSITIONS,
    Event,
    InvalidTransition,
    Policy,
    RegState,
    Registrant,
)
from uacregistrant.sip.digest import ChallengeLayout, parse_authorization, verify_authorization
from uacregistrant.sip.message import Response, parse_message


def account(**kw: object) -> Account:
    values: dict = dict(
        row_id=1, aor="sip:alice@example.com", registrar="sip:example.com",
        binding_uri="sip:alice@192.0.2.1:5060", expiry=3600, username="alice", password="secret",
    )
    values.update(kw)
    return Account(**values)


def response(status: int, reason: str = "X", headers: str = "") -> Response:
    data = (
        f"SIP/2.0 {status} {reason}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 REGISTER\r\n"
        f"To: <sip:alice@example.com>;tag=t\r\nFrom: <sip:alice@example.com>;tag=f\r\nCall-ID: c\r\n{headers}\r\n"
    ).encode()
    message = parse_message(data)
    assert isinstance(message, Response)
    return message


CHALLENGE = 'WWW-Authenticate: Digest realm="r", nonce="n1", qop="auth", algorithm=MD5\r\n'


class RegistrantTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.policy = Policy(retry_base=10, retry_max=100, transaction_timeout=32, rng=random.Random(7))

    def registrant(self, **kw: object) -> Registrant:
        return Registrant(account(**kw), self.policy)

    def test_first_register(self) -> None:
        """A new enabled record is due at once and asks for its configured expiry."""
        r = self.registrant()
        self.assertTrue(r.due(0))
        out = r.start(100)
        self.assertEqual((out.cseq, out.expires, out.authorization), (1, 3600, ()))
        self.assertEqual((r.state, r.last_register_sent, r.next_at), (RegState.REGISTERING_STATE, 100, None))
        self.assertFalse(r.due(10**9))

    def test_disabled_record_idle(self) -> None:
        """A disabled record with no binding never wants to send."""
        self.assertFalse(self.registrant(enabled=False).due(10**9))

    def test_challenge_then_ok(self) -> None:
        """401 → authenticated REGISTER (same Call-ID, CSeq+1) → 200 → REGISTERED with refresh time."""
        r = self.registrant()
        call_id = r.call_id
        r.start(0)
        out = r.on_response(response(401, "Unauthorized", CHALLENGE), 1)
        assert out is not None
        self.assertEqual(r.state, RegState.AUTHENTICATING_STATE)
        self.assertEqual(out.cseq, 2)
        (name, value), = out.authorization
        self.assertEqual(name, "Authorization")
        params = parse_authorization(value)
        self.assertEqual((params["uri"], params["nc"]), ("sip:example.com", "00000001"))
        self.assertTrue(verify_authorization(params, "secret", "REGISTER"))
        self.assertIsNone(r.on_response(response(200, "OK", "Contact: <sip:alice@192.0.2.1:5060>;expires=600\r\n"), 2))
        self.assertEqual((r.state, r.expires, r.registered_until), (RegState.REGISTERED_STATE, 600, 602))
        self.assertEqual(r.next_at, 602 - 60)
        self.assertEqual(r.call_id, call_id)
        self.assertEqual(r.start(r.next_at).cseq, 3)

    def test_refresh_sends_credentials_up_front(self) -> None:
        """A refresh reuses the nonce with nc+1; a challenge to it is a new challenge, not a rejection."""
        r = self.registrant()
        r.start(0)
        r.on_response(response(401, "Unauthorized", CHALLENGE), 1)
        r.on_response(response(200, "OK"), 2)
        out = r.start(3000)
        params = parse_authorization(out.authorization[0][1])
        self.assertEqual((params["nonce"], params["nc"]), ("n1", "00000002"))
        self.assertTrue(verify_authorization(params, "secret", "REGISTER"))
        follow = r.on_response(response(401, "Unauthorized", CHALLENGE.replace("n1", "n9")), 3001)
        assert follow is not None
        self.assertEqual(r.state, RegState.AUTHENTICATING_STATE)
        self.assertEqual(parse_authorization(follow.authorization[0][1])["nc"], "00000001")
        self.assertIsNone(r.on_response(response(401, "Unauthorized", CHALLENGE), 3002))
        self.assertEqual(r.state, RegState.WRONG_CREDENTIALS_STATE)
        self.assertEqual(r.start(4000).authorization, ())

    def test_proxy_challenge(self) -> None:
        """407 is answered with Proxy-Authorization."""
        r = self.registrant()
        r.start(0)
        out = r.on_response(response(407, "Proxy Authentication Required", CHALLENGE.replace("WWW", "Proxy")), 1)
        assert out is not None
        self.assertEqual(out.authorization[0][0], "Proxy-Authorization")


    def test_kept_challenges_share_their_layout(self) -> None:
        """Records challenged alike keep one layout between them (realm, qop, algorithm) and their own nonces."""
        records = [self.registrant(aor=f"sip:u{i}@example.com") for i in range(3)]
        for i, r in enumerate(records):
            r.start(0)
            r.on_response(response(401, "Unauthorized", CHALLENGE.replace("n1", f"n{i}").replace('"r"', '"'.join(["", "r", ""]))), 1)
            r.on_response(response(200, "OK"), 2)
        # In the compact form: the shared layout, the nonce and count in the record's fields.
        kept = [r._auth for r in records]
        self.assertIsInstance(kept[0], ChallengeLayout)
        self.assertIs(kept[0], kept[1])
        self.assertIs(kept[0], kept[2])
        self.assertEqual(len(self.policy.shared.layouts), 1)
        for i, r in enumerate(records):
            params = parse_authorization(r.start(3000).authorization[0][1])
            self.assertEqual((params["nonce"], params["nc"], params["realm"], params["qop"]), (f"n{i}", "00000002", "r", "auth"))
            self.assertTrue(verify_authorization(params, "secret", "REGISTER"))

    def test_opaque_kept_with_its_nonce(self) -> None:
        """A challenge's opaque goes back with every answer, the refresh's included; stale=true is not kept."""
        r = self.registrant()
        r.start(0)
        follow = r.on_response(response(401, "Unauthorized", CHALLENGE.replace("MD5", 'MD5, opaque="o1", stale=true')), 1)
        assert follow is not None
        self.assertEqual(parse_authorization(follow.authorization[0][1])["opaque"], "o1")
        r.on_response(response(200, "OK"), 2)
        assert isinstance(r._auth, tuple)  # not the compact form: the opaque is the record's own
        self.assertNotIn("stale", dict(r._auth[0].layout.params))
        params = parse_authorization(r.start(3000).authorization[0][1])
        self.assertEqual((params["nonce"], params["nc"], params["opaque"]), ("n1", "00000002", "o1"))
        self.assertTrue(verify_authorization(params, "secret", "REGISTER"))

    def test_proxy_challenge_kept(self) -> None:
        """A kept 407 (compact form) goes up front as Proxy-Authorization; a 401 then adds the registrar's; a failure drops both."""
        r = self.registrant()
        r.start(0)
        r.on_response(response(407, "Proxy Authentication Required", CHALLENGE.replace("WWW", "Proxy").replace("n1", "p1")), 1)
        r.on_response(response(200, "OK"), 2)
        self.assertIsInstance(r._auth, ChallengeLayout)
        out = r.start(3000)
        self.assertEqual([(name, parse_authorization(value)["nc"]) for name, value in out.authorization], [("Proxy-Authorization", "00000002")])
        follow = r.on_response(response(401, "Unauthorized", CHALLENGE), 3001)
        assert follow is not None
        self.assertEqual(
            [(name, parse_authorization(value)["nonce"], parse_authorization(value)["nc"]) for name, value in follow.authorization],
            [("Proxy-Authorization", "p1", "00000003"), ("Authorization", "n1", "00000001")],
        )
        r.on_response(response(403, "Forbidden"), 3002)
        self.assertEqual((r._auth, r._nonce), (None, ""))
        self.assertEqual(r.start(4000).authorization, ())
        # A 401 alone after that is kept compact again, answered with Authorization.
        r.on_response(response(401, "Unauthorized", CHALLENGE), 4001)
        r.on_response(response(200, "OK"), 4002)
        self.assertIsInstance(r._auth, ChallengeLayout)
        self.assertEqual([name for name, _ in r.start(5000).authorization], ["Authorization"])

    def test_flags_are_independent(self) -> None:
        """
        The pacer's mark, resend and retiring neither read nor change which
        header a kept challenge is answered with, and a kept 407 does not
        read as queued in the pacer (they share one field of bits; a shared
        bit once left 407-challenged records never refreshed).
        """
        for status, header in ((407, "Proxy-Authorization"), (401, "Authorization")):
            r = self.registrant()
            r.start(0)
            name = "Proxy" if status == 407 else "WWW"
            r.on_response(response(status, "Challenge", CHALLENGE.replace("WWW", name)), 1)
            r.on_response(response(200, "OK"), 2)
            self.assertEqual((r.paced, r.resend, r.retiring, r.removed), (False, False, False, False), status)
            for flag in ("paced", "resend", "retiring"):
                setattr(r, flag, True)
                self.assertEqual([f for f in ("paced", "resend", "retiring") if getattr(r, f)], [flag], status)
                self.assertFalse(r.removed)
                setattr(r, flag, False)
            r.paced = True
            out = r.start(3000)
            self.assertEqual([n for n, _ in out.authorization], [header], status)
            self.assertTrue(r.paced)

    def test_proxy_and_registrar_challenges_both_kept(self) -> None:
        """A 407 then a 401 in one attempt: the refresh carries both answers, each with its own nonce count."""
        r = self.registrant()
        r.start(0)
        r.on_response(response(407, "Proxy Authentication Required", CHALLENGE.replace("WWW", "Proxy").replace("n1", "p1")), 1)
        follow = r.on_response(response(401, "Unauthorized", CHALLENGE), 2)
        assert follow is not None
        self.assertEqual([name for name, _ in follow.authorization], ["Proxy-Authorization", "Authorization"])
        r.on_response(response(200, "OK"), 3)
        out = r.start(3000)
        answers = {name: parse_authorization(value) for name, value in out.authorization}
        self.assertEqual(
            {name: (params["nonce"], params["nc"]) for name, params in answers.items()},
            {"Proxy-Authorization": ("p1", "00000003"), "Authorization": ("n1", "00000002")},
        )
        # A new 407 replaces only the proxy's kept challenge.
        follow = r.on_response(response(407, "Proxy Authentication Required", CHALLENGE.replace("WWW", "Proxy").replace("n1", "p2")), 3001)
        assert follow is not None
        answers = {name: parse_authorization(value) for name, value in follow.authorization}
        self.assertEqual(
            {name: (params["nonce"], params["nc"]) for name, params in answers.items()},
            {"Proxy-Authorization": ("p2", "00000001"), "Authorization": ("n1", "00000003")},
        )
    def test_granted_expiry_sources(self) -> None:
        """
        Our Contact's expires, else the Expires header; with no Contact of
        ours, a guess that is never long: the smallest expiry of bindings
        plausibly ours (same user, or the only one), else the Expires
        header, else the smallest listed, else 60 s; never above what was
        asked, never below 10 s.
        """
        guesses = []
        self.policy = Policy(retry_base=10, retry_max=100, transaction_timeout=32, rng=random.Random(7),
                             expiry_guessed=lambda: guesses.append(1))
        cases = [
            ("Contact: <sip:other@192.0.2.9>;expires=5\r\nContact: <sip:alice@192.0.2.1:5060;ob>;expires=300\r\nExpires: 50\r\n", 300, False),
            ("Contact: <sip:alice@192.0.2.1:5060>\r\nExpires: 70\r\n", 70, False),
            # Rewritten by the registrar (a parameter added, the host changed): same user part.
            ("Contact: <sip:alice@192.0.2.1:5060;transport=udp>;expires=60\r\nContact: <sip:bob@192.0.2.9>;expires=5\r\n", 60, True),
            ("Contact: <sip:alice@203.0.113.7:5060>;expires=80\r\nContact: <sip:alice@203.0.113.8>;expires=90\r\nExpires: 3600\r\n", 80, True),
            # The only Contact is plausibly ours, whatever its user part.
            ("Contact: <sip:other@192.0.2.9>;expires=25\r\nExpires: 50\r\n", 25, True),
            ("Contact: <sip:ALICE@192.0.2.1:5060>;expires=9\r\nExpires: 50\r\n", 10, True),
            # Nothing plausibly ours: the Expires header, never above what was asked.
            ("Contact: <sip:x@192.0.2.9>;expires=5\r\nContact: <sip:y@192.0.2.9>;expires=7\r\nExpires: 50\r\n", 50, True),
            ("Contact: <sip:x@192.0.2.9>;expires=5\r\nContact: <sip:y@192.0.2.9>;expires=7\r\nExpires: 99999\r\n", 3600, True),
            ("Contact: <sip:x@192.0.2.9>;expires=500\r\nContact: <sip:y@192.0.2.9>;expires=700\r\n", 500, True),
            # Expiries that are not ASCII numbers are not offers.
            ("Contact: <sip:alice@192.0.2.2:5060>;expires=\u00b2\r\nContact: <sip:z@192.0.2.9>;expires=40\r\n", 40, True),
            # Nothing usable: short, never sub-second.
            ("", 60, True),
            ("Contact: <sip:bob@192.0.2.9>;expires=5\r\nContact: <sip:alice@192.0.2.1:5060>\r\n", 60, True),
            ("Contact: <sip:alice@192.0.2.7>;expires=1\r\nContact: <sip:alice@192.0.2.8>;expires=900\r\n", 10, True),
        ]
        for headers, granted, guessed in cases:
            del guesses[:]
            r = self.registrant()
            r.start(0)
            r.on_response(response(200, "OK", headers), 0)
            self.assertEqual((r.state, r.expires, bool(guesses)), (RegState.REGISTERED_STATE, granted, guessed), headers)

    def test_no_credentials(self) -> None:
        """A challenge to a record without credentials is WRONG_CREDENTIALS, retried later."""
        r = self.registrant(password=None)
        r.start(0)
        self.assertIsNone(r.on_response(response(401, "Unauthorized", CHALLENGE), 1))
        self.assertEqual(r.state, RegState.WRONG_CREDENTIALS_STATE)
        assert r.next_at is not None
        self.assertTrue(1 + 5 <= r.next_at <= 1 + 10)

    def test_rejected_credentials(self) -> None:
        """A second challenge to an authenticated request is WRONG_CREDENTIALS."""
        r = self.registrant()
        r.start(0)
        r.on_response(response(401, "Unauthorized", CHALLENGE), 1)
        self.assertIsNone(r.on_response(response(401, "Unauthorized", CHALLENGE), 2))
        self.assertEqual(r.state, RegState.WRONG_CREDENTIALS_STATE)
        self.assertIn("credentials rejected", r.last_error)

    def test_stale_nonce(self) -> None:
        """stale=true is answered with the new nonce, a bounded number of times."""
        r = self.registrant()
        r.start(0)
        r.on_response(response(401, "Unauthorized", CHALLENGE), 1)
        stale = CHALLENGE.replace("n1", "n2").replace("MD5", "MD5, stale=true")
        for _ in range(2):
            out = r.on_response(response(401, "Unauthorized", stale), 2)
            assert out is not None
            self.assertIn('nonce="n2"', out.authorization[0][1])
        self.assertIsNone(r.on_response(response(401, "Unauthorized", stale), 3))
        self.assertEqual(r.state, RegState.WRONG_CREDENTIALS_STATE)

    def test_unsupported_algorithm(self) -> None:
        """Only unknown algorithms offered → INTERNAL_ERROR naming them."""
        r = self.registrant()
        r.start(0)
        r.on_response(response(401, "Unauthorized", CHALLENGE.replace("MD5", "AKAv1-MD5")), 1)
        self.assertEqual(r.state, RegState.INTERNAL_ERROR_STATE)
        self.assertIn("AKAV1-MD5", r.last_error)

    def test_interval_too_brief(self) -> None:
        """423 → resend at once with Min-Expires, kept for later refreshes."""
        r = self.registrant(expiry=60)
        r.start(0)
        out = r.on_response(response(423, "Interval Too Brief", "Min-Expires: 600\r\n"), 1)
        assert out is not None
        self.assertEqual((out.expires, out.cseq, r.state), (600, 2, RegState.REGISTERING_STATE))
        r.on_response(response(200, "OK"), 2)
        self.assertEqual(r.start(10**6).expires, 600)

    def test_interval_too_brief_after_authentication(self) -> None:
        """A 423 to an authenticated REGISTER (Kamailio's order) resends with credentials, nc+1."""
        r = self.registrant(expiry=60)
        r.start(0)
        r.on_response(response(401, "Unauthorized", CHALLENGE), 1)
        out = r.on_response(response(423, "Interval Too Brief", "Min-Expires: 600\r\n"), 2)
        assert out is not None
        self.assertEqual((out.expires, parse_authorization(out.authorization[0][1])["nc"]), (600, "00000002"))
        follow = r.on_response(response(401, "Unauthorized", CHALLENGE.replace("n1", "n2")), 3)
        assert follow is not None
        self.assertEqual(r.state, RegState.AUTHENTICATING_STATE)
        r.on_response(response(200, "OK", "Contact: <sip:alice@192.0.2.1:5060>;expires=600\r\n"), 4)
        self.assertEqual((r.state, r.expires), (RegState.REGISTERED_STATE, 600))

    def test_interval_too_brief_without_progress(self) -> None:
        """A 423 whose Min-Expires is missing or not larger is a registrar error."""
        for headers in ["", "Min-Expires: 30\r\n", "Min-Expires: junk\r\n"]:
            r = self.registrant(expiry=60)
            r.start(0)
            self.assertIsNone(r.on_response(response(423, "Interval Too Brief", headers), 1))
            self.assertEqual(r.state, RegState.REGISTRAR_ERROR_STATE)

    def test_error_backoff_and_retry_after(self) -> None:
        """Failures back off exponentially with jitter, capped; Retry-After wins."""
        r = self.registrant()
        delays = []
        now = 0.0
        for _ in range(8):
            r.start(now)
            r.on_response(response(500, "Server Internal Error"), now)
            self.assertEqual(r.state, RegState.REGISTRAR_ERROR_STATE)
            assert r.next_at is not None
            delays.append(r.next_at - now)
            now = r.next_at
        for i, delay in enumerate(delays):
            cap = min(100, 10 * 2**i)
            self.assertTrue(cap / 2 <= delay <= cap, (i, delay))
        r.start(now)
        r.on_response(response(503, "Service Unavailable", "Retry-After: 42\r\n"), now)
        self.assertEqual(r.next_at, now + 42)
        r.start(now)
        r.on_response(response(408, "Request Timeout"), now)
        self.assertEqual(r.state, RegState.REGISTER_TIMEOUT_STATE)

    def test_timeout_and_success_resets_failures(self) -> None:
        """Timer F → REGISTER_TIMEOUT; a later 200 resets the back-off."""
        r = self.registrant()
        r.start(0)
        r.on_timeout(32)
        self.assertEqual((r.state, r.failures), (RegState.REGISTER_TIMEOUT_STATE, 1))
        r.start(50)
        r.on_response(response(200, "OK"), 51)
        self.assertEqual((r.state, r.failures, r.last_error), (RegState.REGISTERED_STATE, 0, ""))

    def test_unregister(self) -> None:
        """A disabled record holding a binding un-registers, then goes idle."""
        r = self.registrant()
        r.start(0)
        r.on_response(response(200, "OK"), 1)
        r.account = account(enabled=False)
        r.next_at = 5
        out = r.start(5)
        self.assertEqual((out.expires, r.state), (0, RegState.UNREGISTERING_STATE))
        out2 = r.on_response(response(401, "Unauthorized", CHALLENGE), 6)
        assert out2 is not None
        self.assertEqual((out2.expires, r.state), (0, RegState.AUTHENTICATING_UNREGISTER_STATE))
        self.assertIsNone(r.on_response(response(200, "OK"), 7))
        self.assertEqual((r.state, r.next_at, r.registered_until), (RegState.NOT_REGISTERED_STATE, None, None))

    def test_late_or_provisional_responses_ignored(self) -> None:
        """Provisional responses and responses outside a transaction change nothing."""
        r = self.registrant()
        self.assertIsNone(r.on_response(response(200, "OK"), 0))
        self.assertEqual(r.state, RegState.NOT_REGISTERED_STATE)
        r.start(0)
        self.assertIsNone(r.on_response(response(100, "Trying"), 0))
        self.assertEqual(r.state, RegState.REGISTERING_STATE)

    def test_refresh_lead(self) -> None:
        """Refreshes start well before expiry, never later than half-way."""
        self.assertEqual(self.policy.refresh_lead(3600), 360)
        self.assertEqual(self.policy.refresh_lead(300), 32)
        self.assertEqual(self.policy.refresh_lead(20), 10)


class HostileRegistrarTests(SynchronousTestCase):
    """
    Answers no check foresaw end in a settled state with pending work
    (C{next_at} set), never in a transaction state with nothing to end it.
    """

    def setUp(self) -> None:
        self.policy = Policy(retry_base=40, retry_max=1000, transaction_timeout=32, rng=random.Random(3))

    def settled(self, r: Registrant, now: float) -> None:
        self.assertNotIn(r.state, IN_TRANSACTION)
        assert r.next_at is not None
        self.assertGreater(r.next_at, now)

    def test_unicode_digits_never_wedge(self) -> None:
        """Superscript and Arabic-Indic digits are not numbers: each answer still settles the record."""
        for digit in ("\u00b2", "\u00b3", "\u0661", "\uff11", "1\u00b2"):
            cases = [
                (200, f"Contact: <sip:alice@192.0.2.1:5060>;expires={digit}\r\n", RegState.REGISTERED_STATE),
                (200, f"Expires: {digit}\r\n", RegState.REGISTERED_STATE),
                (423, f"Min-Expires: {digit}\r\n", RegState.REGISTRAR_ERROR_STATE),
                (503, f"Retry-After: {digit}\r\n", RegState.REGISTRAR_ERROR_STATE),
            ]
            for status, headers, state in cases:
                r = Registrant(account(), self.policy)
                r.start(0)
                self.assertIsNone(r.on_response(response(status, "X", headers), 1), headers)
                self.assertEqual(r.state, state, headers)
                self.settled(r, 1)

    def test_unsplittable_contact_list(self) -> None:
        """A 200 whose Contact list has an open quote (found by the fuzzer): registered on a guess."""
        r = Registrant(account(), self.policy)
        r.start(0)
        self.assertIsNone(r.on_response(response(200, "OK", 'Contact: "open <sip:alice@192.0.2.1:5060>;expires=60\r\nExpires: 60\r\n'), 1))
        self.assertEqual((r.state, r.expires), (RegState.REGISTERED_STATE, 60))
        self.settled(r, 1)

    def test_longer_grant_taken_as_asked(self) -> None:
        """A grant above the request (4294967295 from a hostile registrar) refreshes as if the request was granted."""
        r = Registrant(account(), self.policy)
        r.start(0)
        r.on_response(response(200, "OK", "Contact: <sip:alice@192.0.2.1:5060>;expires=4294967295\r\n"), 1)
        self.assertEqual((r.state, r.expires, r.registered_until), (RegState.REGISTERED_STATE, 3600, 3601))
        self.settled(r, 1)
        assert r.next_at is not None
        self.assertLess(r.next_at, 3601)

    def test_registrar_text_is_bounded(self) -> None:
        """A 60 KB reason phrase is kept to 128 characters; last_error to 300."""
        r = Registrant(account(), self.policy)
        r.start(0)
        r.on_response(response(503, "Busy " + "x" * 60000), 1)
        assert r.last_reply is not None
        self.assertEqual(len(r.last_reply[1]), 128)
        self.assertLessEqual(len(r.last_error), 300)

    def test_huge_nonce_answered_not_kept(self) -> None:
        """A challenge with a 5 KB nonce is answered, but not kept for credentials up front."""
        r = Registrant(account(), self.policy)
        r.start(0)
        out = r.on_response(response(401, "Unauthorized", CHALLENGE.replace("n1", "n" * 5000)), 1)
        assert out is not None
        self.assertIn("n" * 5000, out.authorization[0][1])
        self.assertEqual(len(self.policy.shared.layouts), 0)  # nor its layout shared
        r.on_response(response(200, "OK", "Contact: <sip:alice@192.0.2.1:5060>;expires=600\r\n"), 2)
        self.assertEqual(r.state, RegState.REGISTERED_STATE)
        self.assertEqual(r.start(600).authorization, ())
        # The same when the attempt was an un-REGISTER.
        r = Registrant(account(enabled=False), self.policy)
        r.registered_until = 1000
        r.start(0)
        self.assertIsNotNone(r.on_response(response(401, "Unauthorized", CHALLENGE.replace("n1", "n" * 5000)), 1))
        r.on_response(response(200, "OK"), 2)
        self.assertEqual((r.state, r._auth), (RegState.NOT_REGISTERED_STATE, None))

    def test_interval_too_brief_forever(self) -> None:
        """A registrar raising Min-Expires on every 423 gets two follow-ups, then the back-off."""
        r = Registrant(account(expiry=60), self.policy)
        r.start(0)
        sent = 1
        minimum = 100
        while (out := r.on_response(response(423, "Interval Too Brief", f"Min-Expires: {minimum}\r\n"), sent)) is not None:
            self.assertEqual(out.expires, minimum)
            sent += 1
            minimum += 100
            self.assertLess(sent, 10)
        self.assertEqual(sent, 3)
        self.assertEqual(r.state, RegState.REGISTRAR_ERROR_STATE)
        self.assertIn("423 again", r.last_error)
        self.settled(r, sent)
        # The next attempt may raise it again (kept for later refreshes).
        self.assertEqual(r.start(10**4).expires, 200)

    def test_follow_ups_are_capped(self) -> None:
        """423s and fresh challenges in turn cannot keep one attempt going."""
        r = Registrant(account(expiry=60), self.policy)
        r.start(0)
        follow_ups = 0
        minimum = 100
        for i in range(20):
            if i % 2:
                answer = response(423, "Interval Too Brief", f"Min-Expires: {minimum}\r\n")
                minimum += 100
            else:
                answer = response(401, "Unauthorized", CHALLENGE.replace("n1", f"n{i}"))
            if r.on_response(answer, i) is None:
                break
            follow_ups += 1
        self.assertLessEqual(follow_ups, MAX_FOLLOW_UPS)
        self.assertEqual(r.state, RegState.REGISTRAR_ERROR_STATE)
        self.settled(r, 20)

    def test_retry_after_is_clamped(self) -> None:
        """Retry-After 0 waits a quarter of the retry interval; 4294967295 waits the maximum interval."""
        for header, delay in (("0", 10.0), ("5", 10.0), ("300", 300.0), ("4294967295", 1000.0), ("99999999999999999999", 1000.0)):
            r = Registrant(account(), self.policy)
            r.start(0)
            r.on_response(response(503, "Service Unavailable", f"Retry-After: {header}\r\n"), 1)
            self.assertEqual(r.next_at, 1 + delay, header)

    def test_internal_error(self) -> None:
        """An internal error settles the record in INTERNAL_ERROR with the reason and the back-off."""
        r = Registrant(account(), self.policy)
        r.start(0)
        r.on_response(response(401, "Unauthorized", CHALLENGE), 1)
        r.on_internal_error(2, "internal error handling a response: ValueError: x")
        self.assertEqual((r.state, r.last_error, r.failures), (RegState.INTERNAL_ERROR_STATE, "internal error handling a response: ValueError: x", 1))
        self.settled(r, 2)
        assert r.next_at is not None
        self.assertTrue(2 + 20 <= r.next_at <= 2 + 40)
        self.assertEqual(r.start(r.next_at).authorization, ())


class RenderRegisterTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """The rendered REGISTER parses back with every header the registrar needs, credentials included."""
        from uacregistrant.core.register import render_register
        from uacregistrant.core.registrant import Outgoing
        from uacregistrant.sip.message import Request

        out = Outgoing(7, 600, (("Authorization", 'Digest username="alice", nonce="n"'),))
        data = render_register(
            account(binding_params=";transport=udp"), "cid", "ftag", out, ("2001:db8::1", 5070), "z9hG4bKb1", "ua/1"
        )
        message = parse_message(data)
        assert isinstance(message, Request)
        self.assertEqual((message.method, message.uri), ("REGISTER", "sip:example.com"))
        self.assertEqual(message.top_via.host, "2001:db8::1")
        self.assertEqual((message.top_via.port, message.top_via.branch), (5070, "z9hG4bKb1"))
        self.assertEqual(message.cseq, (7, "REGISTER"))
        self.assertEqual(message.call_id, "cid")
        self.assertEqual(message.get("from"), "<sip:alice@example.com>;tag=ftag")
        self.assertEqual(message.get("contact"), "<sip:alice@192.0.2.1:5060>;transport=udp;expires=600")
        self.assertEqual(message.get("authorization"), 'Digest username="alice", nonce="n"')
        self.assertEqual(message.get("user-agent"), "ua/1")
        self.assertEqual(message.body, b"")
        self.assertTrue(data.endswith(b"Content-Length: 0\r\n\r\n"))

    def test_stream_via_and_no_user_agent(self) -> None:
        """The Via names the transport; an empty User-Agent leaves the header out."""
        from uacregistrant.core.register import render_register
        from uacregistrant.core.registrant import Outgoing

        data = render_register(account(), "cid", "ftag", Outgoing(1, 60), ("192.0.2.1", 5061), "z9hG4bKb1", "", "TLS")
        message = parse_message(data)
        self.assertTrue(message.get_all("via")[0].startswith("SIP/2.0/TLS 192.0.2.1:5061;"))
        self.assertIsNone(message.get("user-agent"))

    def test_no_value_can_inject_a_line(self) -> None:
        """
        Even an account that bypassed row validation cannot put a CR or LF
        on the wire: rendering refuses (and the client's guard turns that
        into INTERNAL_ERROR).
        """
        from uacregistrant.core.register import render_register
        from uacregistrant.core.registrant import Outgoing
        from uacregistrant.sip.errors import SipRenderError

        for field in ("aor", "binding_uri", "binding_params", "third_party_registrant", "registrar"):
            value = {"aor": "sip:alice@example.com", "binding_uri": "sip:alice@192.0.2.1:5060", "binding_params": ";ob",
                     "third_party_registrant": "sip:admin@example.com", "registrar": "sip:example.com"}[field]
            for bad in ("\r\nX-Injected: 1", "\rX-Injected: 1", "\nX-Injected: 1"):
                bad_account = account(**{field: value + bad}) if field != "registrar" else account()
                if field == "registrar":
                    object.__setattr__(bad_account, "registrar", value + bad)
                with self.assertRaises(SipRenderError, msg=(field, bad)):
                    render_register(bad_account, "cid", "ftag", Outgoing(1, 60), ("192.0.2.1", 5060), "z9hG4bKb1")
        with self.assertRaises(SipRenderError):
            render_register(account(), "cid", "ftag", Outgoing(1, 60, (("Authorization", "Digest x\r\nY: 1"),)),
                            ("192.0.2.1", 5060), "z9hG4bKb1")


class TransitionTableTests(SynchronousTestCase):
    """L{TRANSITIONS} is the one place a registrant's state changes."""

    def setUp(self) -> None:
        self.policy = Policy(retry_base=10, retry_max=100, transaction_timeout=32, rng=random.Random(5))

    def registrant(self, **kw: object) -> Registrant:
        return Registrant(account(**kw), self.policy)

    def in_state(self, state: RegState, **kw: object) -> Registrant:
        r = self.registrant(**kw)
        r._state = state  # a fixture: put the record in the state under test
        return r

    def record_moves(self) -> list[tuple[RegState, Event]]:
        """Wrap L{Registrant._move} so every (state, event) it is asked for is kept."""
        if COMPILED:
            raise SkipTest(PURE_ONLY)
        moves: list[tuple[RegState, Event]] = []
        original = Registrant._move

        def move(registrant: Registrant, event: Event) -> None:
            moves.append((registrant.state, event))
            original(registrant, event)

        self.patch(Registrant, "_move", move)
        return moves

    def test_every_state_can_fail(self) -> None:
        """Every state has a FAILED transition, and it lands in INTERNAL_ERROR_STATE."""
        for state in RegState:
            self.assertEqual(TRANSITIONS.get((state, Event.FAILED)), RegState.INTERNAL_ERROR_STATE, state)
            r = self.in_state(state)
            r.on_internal_error(1, "x")
            self.assertEqual(r.state, RegState.INTERNAL_ERROR_STATE, state)

    def test_attempts_start_only_at_rest(self) -> None:
        """SEND_REGISTER and SEND_UNREGISTER are in the table exactly for the states in AT_REST."""
        self.assertEqual(
            AT_REST,
            {
                RegState.NOT_REGISTERED_STATE,
                RegState.REGISTERED_STATE,
                RegState.REGISTER_TIMEOUT_STATE,
                RegState.INTERNAL_ERROR_STATE,
                RegState.WRONG_CREDENTIALS_STATE,
                RegState.REGISTRAR_ERROR_STATE,
            },
        )
        for event, target in ((Event.SEND_REGISTER, RegState.REGISTERING_STATE),
                              (Event.SEND_UNREGISTER, RegState.UNREGISTERING_STATE)):
            allowed = {state for (state, e) in TRANSITIONS if e == event}
            self.assertEqual(allowed, set(AT_REST), event)
            for state in AT_REST:
                self.assertEqual(TRANSITIONS[state, event], target)

    def test_start_in_transaction_refused(self) -> None:
        """Starting an attempt while one is outstanding raises InvalidTransition and keeps the state."""
        for state in IN_TRANSACTION:
            for enabled in (True, False):
                r = self.in_state(state, enabled=enabled)
                with self.assertRaises(InvalidTransition, msg=(state, enabled)):
                    r.start(5)
                self.assertEqual(r.state, state)

    def test_event_not_allowed_raises(self) -> None:
        """GRANTED from REGISTERED_STATE (and other pairs absent from the table) raise, naming event and state."""
        r = self.in_state(RegState.REGISTERED_STATE)
        with self.assertRaises(InvalidTransition) as raised:
            r._move(Event.GRANTED)
        self.assertIn("REGISTERED_STATE", str(raised.exception))
        self.assertIn(Event.GRANTED.value, str(raised.exception))
        self.assertEqual(r.state, RegState.REGISTERED_STATE)
        for state, event in [(RegState.NOT_REGISTERED_STATE, Event.CHALLENGED),
                             (RegState.REGISTERING_STATE, Event.RELEASED),
                             (RegState.UNREGISTERING_STATE, Event.GRANTED),
                             (RegState.UNREGISTERING_STATE, Event.TOO_BRIEF),
                             (RegState.REGISTERING_STATE, Event.IDLE),
                             (RegState.REGISTER_TIMEOUT_STATE, Event.TIMED_OUT)]:
            self.assertNotIn((state, event), TRANSITIONS)
            with self.assertRaises(InvalidTransition):
                self.in_state(state)._move(event)

    def test_scenarios_take_only_pairs_in_the_table(self) -> None:
        """
        200, 401→200, 423→200, 408, Timer F and an un-REGISTER walk only
        (state, event) pairs of the table, through the expected events.
        """
        moves = self.record_moves()
        ok = response(200, "OK", "Contact: <sip:alice@192.0.2.1:5060>;expires=600\r\n")
        scenarios: list[tuple[str, list[Event], RegState]] = []

        r = self.registrant()
        r.start(0)
        r.on_response(ok, 1)
        scenarios.append(("200", [Event.SEND_REGISTER, Event.GRANTED], r.state))

        r = self.registrant()
        r.start(0)
        r.on_response(response(401, "Unauthorized", CHALLENGE), 1)
        r.on_response(ok, 2)
        scenarios.append(("401-200", [Event.SEND_REGISTER, Event.CHALLENGED, Event.GRANTED], r.state))

        r = self.registrant(expiry=60)
        r.start(0)
        r.on_response(response(423, "Interval Too Brief", "Min-Expires: 600\r\n"), 1)
        r.on_response(ok, 2)
        scenarios.append(("423-200", [Event.SEND_REGISTER, Event.TOO_BRIEF, Event.GRANTED], r.state))

        r = self.registrant()
        r.start(0)
        r.on_response(response(408, "Request Timeout"), 1)
        scenarios.append(("408", [Event.SEND_REGISTER, Event.TIMED_OUT], r.state))

        r = self.registrant()
        r.start(0)
        r.on_timeout(32)
        scenarios.append(("timeout", [Event.SEND_REGISTER, Event.TIMED_OUT], r.state))

        r = self.registrant()
        r.start(0)
        r.on_response(ok, 1)
        r.retire(2)
        r.start(2)
        r.on_response(response(401, "Unauthorized", CHALLENGE), 3)
        r.on_response(response(200, "OK"), 4)
        scenarios.append(("un-register", [Event.SEND_REGISTER, Event.GRANTED, Event.SEND_UNREGISTER,
                                          Event.CHALLENGED, Event.RELEASED], r.state))

        expected_states = {
            "200": RegState.REGISTERED_STATE, "401-200": RegState.REGISTERED_STATE,
            "423-200": RegState.REGISTERED_STATE, "408": RegState.REGISTER_TIMEOUT_STATE,
            "timeout": RegState.REGISTER_TIMEOUT_STATE, "un-register": RegState.NOT_REGISTERED_STATE,
        }
        self.assertEqual([e for _, e in moves], [e for _, events, _ in scenarios for e in events])
        for name, _, state in scenarios:
            self.assertEqual(state, expected_states[name], name)
        for pair in moves:
            self.assertIn(pair, TRANSITIONS)
        # The un-REGISTER was answered with credentials from its own state.
        self.assertIn((RegState.UNREGISTERING_STATE, Event.CHALLENGED), moves)
        self.assertIn((RegState.AUTHENTICATING_UNREGISTER_STATE, Event.RELEASED), moves)

    def test_retry_early(self) -> None:
        """Only a record waiting out a timeout, not removed, with a later send time, is brought forward."""
        r = self.registrant()
        r.start(0)
        r.on_timeout(32)
        assert r.next_at is not None and r.next_at > 40
        self.assertTrue(r.retry_early(40))
        self.assertEqual(r.next_at, 40)
        self.assertFalse(r.retry_early(40))  # already due: nothing moves
        self.assertEqual(r.next_at, 40)

        failed = self.registrant()
        failed.start(0)
        failed.on_response(response(500, "Server Internal Error"), 1)
        before = failed.next_at
        self.assertFalse(failed.retry_early(2))
        self.assertEqual((failed.state, failed.next_at), (RegState.REGISTRAR_ERROR_STATE, before))

        gone = self.registrant()
        gone.start(0)
        gone.on_timeout(32)
        before = gone.next_at
        gone.mark_removed()
        self.assertFalse(gone.retry_early(40))
        self.assertEqual(gone.next_at, before)

        idle = self.in_state(RegState.REGISTER_TIMEOUT_STATE, enabled=False)
        idle.next_at = None
        self.assertFalse(idle.retry_early(40))
        self.assertIsNone(idle.next_at)

    def test_mark_removed(self) -> None:
        """A record is not removed until the registry marks it; then it says so for good."""
        r = self.registrant()
        self.assertFalse(r.removed)
        r.mark_removed()
        self.assertTrue(r.removed)
        r.start(0)
        self.assertTrue(r.removed)

    def test_flags_independent(self) -> None:
        """resend, retiring and removed (kept as bits of one field) each change alone."""
        r = self.registrant()
        self.assertEqual((r.resend, r.retiring, r.removed), (False, False, False))
        r.retiring = True
        self.assertEqual((r.resend, r.retiring, r.removed), (False, True, False))
        r.resend = True
        r.mark_removed()
        self.assertEqual((r.resend, r.retiring, r.removed), (True, True, True))
        r.retiring = False
        self.assertEqual((r.resend, r.retiring, r.removed), (True, False, True))
        r.resend = False
        self.assertEqual((r.resend, r.retiring, r.removed), (False, False, True))

    def test_times_none_or_a_time(self) -> None:
        """next_at, registered_until and last_register_sent (kept as floats, NaN for none) read back as set."""
        r = self.registrant(enabled=False)
        self.assertEqual((r.next_at, r.registered_until, r.last_register_sent), (None, None, None))
        self.assertFalse(r.due(float("inf")))
        r.next_at, r.registered_until, r.last_register_sent = 0.0, 7.5, 3.25
        self.assertEqual((r.next_at, r.registered_until, r.last_register_sent), (0.0, 7.5, 3.25))
        self.assertTrue(r.due(0.0))
        r.next_at = r.registered_until = r.last_register_sent = None
        self.assertEqual((r.next_at, r.registered_until, r.last_register_sent), (None, None, None))
        self.assertFalse(r.due(float("inf")))

    def test_send_soon_in_transaction_resends_after(self) -> None:
        """A change during a transaction is sent once the transaction ends (resend), and only once."""
        r = self.registrant()
        r.start(0)
        r.send_soon(1)
        self.assertTrue(r.resend)
        self.assertIsNone(r.next_at)
        r.on_response(response(200, "OK", "Contact: <sip:alice@192.0.2.1:5060>;expires=600\r\n"), 2)
        self.assertEqual((r.resend, r.state, r.next_at), (False, RegState.REGISTERED_STATE, 2))

    def test_reconfigure_enabled_cancels_retiring(self) -> None:
        """A retiring record enabled again before it is forgotten stays (no longer retiring); disabled it keeps retiring."""
        r = self.registrant()
        r.start(0)
        r.on_response(response(200, "OK"), 1)
        r.retire(2)
        self.assertTrue(r.retiring)
        self.assertFalse(r.enabled)
        self.assertFalse(r.reconfigure(account(enabled=False), 3))
        self.assertTrue(r.retiring)
        self.assertTrue(r.reconfigure(account(), 3))
        self.assertFalse(r.retiring)
        self.assertTrue(r.enabled)
        self.assertEqual(r.next_at, 3)
        r.start(3)
        r.on_response(response(200, "OK"), 4)
        self.assertEqual(r.state, RegState.REGISTERED_STATE)
        self.assertFalse(r.finished)
        # The same account, unchanged, still cancels retiring.
        r.retiring = True
        self.assertFalse(r.reconfigure(account(), 5))
        self.assertFalse(r.retiring)


class PrintableTests(SynchronousTestCase):
    def test_control_characters_escaped(self) -> None:
        """last_error may quote a peer: control characters are escaped, never written raw."""
        from uacregistrant.sip.message import printable

        self.assertEqual(printable("certificate is for sip:evil\r\nX: y"), "certificate is for sip:evil\\r\\nX: y")
        self.assertEqual(printable("plain text"), "plain text")


class AdoptTests(SynchronousTestCase):
    def test_ids_from_one_token(self) -> None:
        """Call-ID (32 hex digits) and From-tag (10) come from one 21-byte token, leading zeros kept; a take-over keeps the tag."""
        token = "00" * 15 + "0a" + "0000000b01"
        r = Registrant(account(), Policy(token=lambda n: token if n == 21 else "c" * (2 * n)))
        self.assertEqual((r.call_id, r.from_tag), ("00" * 15 + "0a", "0000000b01"))
        r.adopt("000000000000000000000000000000ff", 7)
        self.assertEqual((r.call_id, r.from_tag), ("000000000000000000000000000000ff", "0000000b01"))
        r = Registrant(account(), Policy(token=lambda n: "f" * (2 * n)))
        self.assertEqual((r.call_id, r.from_tag), ("f" * 32, "f" * 10))

    def test_takes_call_id_and_cseq_above(self) -> None:
        """A take-over continues the Call-ID and goes above the CSeq reserved before; a foreign Call-ID is not taken."""
        r = Registrant(account(), Policy(rng=random.Random(1)))
        self.assertTrue(r.adopt("0123456789abcdef0123456789abcdef", 2000))
        self.assertEqual(r.call_id, "0123456789abcdef0123456789abcdef")
        self.assertEqual(r.start(0).cseq, 2001)
        self.assertFalse(r.adopt("not-ours@host", 10))
        self.assertEqual((r.call_id, r.cseq), ("0123456789abcdef0123456789abcdef", 2001))
