"""Table rows into accounts: good rows, bad rows, hostile rows."""

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.build import COMPILED
from uacregistrant.core import account as account_module
from uacregistrant.core.account import Account, RowError, account_from_row
from uacregistrant.sip.errors import SipParseError
from uacregistrant.sip.sharing import SharedTables
from uacregistrant.sip.uri import parse_uri_uncached


def row(**kw: object) -> dict:
    values: dict = {
        "id": 7, "aor": "sip:alice@example.com", "registrar": "sip:example.com", "binding_URI": "sip:alice@192.0.2.1",
        "expiry": 3600, "state": 0,
    }
    values.update(kw)
    return values



class RowTests(SynchronousTestCase):
    def load(self, **kw: object):  # type: ignore[no-untyped-def]
        return account_from_row(row(**kw), default_expires=3600, timer_interval=100, sockets=["udp:127.0.0.1:5060"])

    def test_good_row(self) -> None:
        """A full row becomes an account; NULL expiry takes the default; state!=0 disables."""
        account = self.load(
            expiry=None, state=1, proxy="<sip:proxy.example.com;lr>", binding_params="transport=udp",
            forced_socket="127.0.0.1", password=" pw ",
        )
        self.assertEqual(account.expiry, 3600)
        self.assertFalse(account.enabled)
        self.assertEqual(account.proxy, "sip:proxy.example.com;lr")
        self.assertEqual(account.next_hop.host, "proxy.example.com")
        self.assertEqual(account.binding_params, ";transport=udp")
        self.assertEqual(account.forced_socket, "udp:127.0.0.1:5060")
        self.assertEqual(account.password, " pw ")
        self.assertNotIn("pw", repr(account))

    def test_bad_rows(self) -> None:
        """Each unusable row raises RowError with a reason and a hint."""
        cases = {
            "registrar": dict(registrar="sip:bob@example.com"),
            "timer_interval": dict(expiry=100),
            "forced_socket": dict(forced_socket="udp:10.9.9.9:5060"),
            "aor": dict(aor="mailto:x"),
            "binding_URI": dict(binding_URI=""),
            "proxy": dict(proxy="sip:u@proxy"),
            "expiry": dict(expiry="soon"),
            "state": dict(state="on"),
        }
        for word, kw in cases.items():
            with self.assertRaises(RowError, msg=word) as caught:
                self.load(**kw)
            self.assertIn(word, caught.exception.reason)
            self.assertTrue(caught.exception.hint)


class SharedTablesTests(SynchronousTestCase):
    """What accounts repeat is kept once in the tables passed, and only there."""

    def load(self, shared: SharedTables | None, **kw: object) -> Account:
        return account_from_row(
            row(**kw), default_expires=3600, timer_interval=100, sockets=["udp:127.0.0.1:5060"], shared=shared
        )

    def test_accounts_share_through_the_tables(self) -> None:
        """Two rows with one registrar and one expiry hold one parsed hop and one int between them."""
        shared = SharedTables()
        first = self.load(shared, aor="sip:a@example.com", expiry=int("7200"))
        second = self.load(shared, aor="sip:b@example.com", expiry=int("7200"))
        self.assertIs(first.next_hop, second.next_hop)
        if not COMPILED:  # compiled, an int attribute is stored unboxed: nothing to share
            self.assertIs(first.expiry, second.expiry)
        proxied = self.load(shared, proxy="<sip:proxy.example.com;lr>")
        self.assertIs(proxied.next_hop, self.load(shared, proxy="sip:proxy.example.com;lr").next_hop)
        self.assertEqual(len(shared.uris), 2)  # the registrar and the proxy (however written); no AOR, no binding
        self.assertEqual(len(shared.expiries), 2)

    def test_nothing_shared_without_tables(self) -> None:
        """Without tables, each account has its own copies: nothing process-wide remembers them."""
        first, second = self.load(None, expiry=int("7200")), self.load(None, expiry=int("7200"))
        self.assertEqual(first.next_hop, second.next_hop)
        self.assertIsNot(first.next_hop, second.next_hop)
        self.assertIsNot(first.expiry, second.expiry)

    def test_services_share_nothing(self) -> None:
        """Tables filled to their limit by one service leave another's sharing."""
        full = SharedTables(uris_limit=1, expiries_limit=1)
        self.load(full, registrar="sip:other.example.com", expiry=int("9000"))
        mine = SharedTables()
        for tables, shares in ((full, False), (mine, True)):
            first = self.load(tables, aor="sip:a@example.com", expiry=int("7200"))
            second = self.load(tables, aor="sip:b@example.com", expiry=int("7200"))
            self.assertEqual(first.next_hop is second.next_hop, shares)
            if not COMPILED:  # compiled, an int attribute is stored unboxed: nothing to share
                self.assertEqual(first.expiry is second.expiry, shares)
        self.assertEqual((len(full.uris), len(full.expiries)), (1, 1))

    def test_replace_keeps_the_hop(self) -> None:
        """dataclasses.replace keeps the shared hop while it stays the same, and parses a new one."""
        account = self.load(SharedTables())
        self.assertIs(dataclasses.replace(account, enabled=False).next_hop, account.next_hop)
        moved = dataclasses.replace(account, proxy="sip:proxy.example.com")
        self.assertEqual(moved.next_hop.host, "proxy.example.com")
        direct = Account(row_id=None, aor="sip:a@x", registrar="sip:x", binding_uri="sip:a@h", expiry=600)
        self.assertEqual(direct.next_hop.host, "x")


class HostileRowTests(SynchronousTestCase):
    """Whatever a row holds, it is an Account or a RowError with a hint; nothing else."""

    def load(self, **kw: object):  # type: ignore[no-untyped-def]
        return account_from_row(row(**kw), default_expires=3600, timer_interval=100, sockets=["udp:127.0.0.1:5060"])

    def refused(self, word: str, **kw: object) -> RowError:
        with self.assertRaises(RowError, msg=repr(kw)) as caught:
            self.load(**kw)
        self.assertIn(word, caught.exception.reason + " " + caught.exception.hint, repr(kw))
        self.assertTrue(caught.exception.hint)
        return caught.exception

    def test_numbers(self) -> None:
        """Ports and numbers in Unicode digits, infinite or not-a-number REALs."""
        self.refused("port", registrar="sip:example.com:\u00b2")
        self.refused("port", binding_URI="sip:alice@192.0.2.1:\u0661")
        self.refused("port", proxy="sip:proxy.example.com:\u00b3")
        for value in (float("inf"), float("nan"), 9e999, 1.5, "\u00b2", "\u0661\u0662", "1e3", b"\xff", [1]):
            self.refused("expiry", expiry=value)
            self.refused("state", state=value)
        self.assertEqual(self.load(expiry=3600.0, state=1.0).expiry, 3600)
        self.assertEqual(self.load(expiry="7200").expiry, 7200)
        self.refused("out of range", expiry=2**40)

    def test_text_that_is_not_utf8(self) -> None:
        """Bytes that are not UTF-8, or read as surrogates, are refused per column."""
        self.refused("UTF-8", username=b"al\xffice")
        self.refused("UTF-8", username="al\udcffice")
        self.refused("UTF-8", password="p\udcff")
        self.refused("UTF-8", aor="sip:al\udcffice@example.com")

    def test_control_characters(self) -> None:
        """CR, LF and other control characters in any value that reaches the wire."""
        for column in ("username", "binding_params", "aor", "third_party_registrant", "proxy", "registrar", "binding_URI"):
            base = {"username": "alice", "binding_params": ";ob", "aor": "sip:alice@example.com",
                    "third_party_registrant": "sip:admin@example.com", "proxy": "sip:proxy.example.com",
                    "registrar": "sip:example.com", "binding_URI": "sip:alice@192.0.2.1"}[column]
            for bad in ("\r\nX-Injected: 1", "\n", "\r", "\x00", "\x1b[31m"):
                self.refused("control character", **{column: base + bad})

    def test_keys_as_stored(self) -> None:
        """Key columns written with <>, quotes or spaces are refused with a hint, not cleaned."""
        for column, value in (("aor", "<sip:alice@example.com>"), ("aor", " sip:alice@example.com"),
                              ("binding_URI", "sip:alice@192.0.2.1 "), ("registrar", "<sip:example.com>"),
                              ("aor", '"A"<sip:alice@example.com>')):
            error = self.refused(column, **{column: value})
            self.assertIn("as stored", error.hint)
        self.refused("whitespace", aor="sip:alice@example.com;x=a b")
        self.refused("whitespace", binding_params=";a=b c")
        self.assertEqual(self.load(binding_params=';x="a b"').binding_params, ';x="a b"')

    def test_header_structure(self) -> None:
        """Values that would change a header's structure without CR/LF: a second Contact, a closed From."""
        self.refused("neither", binding_params=";x=y,<sip:evil@203.0.113.9>")
        self.refused("expires", binding_params=";expires=0")
        self.refused("inside the URI", third_party_registrant="sip:x@example.com;p=a>")
        self.refused("inside the URI", proxy="sip:proxy.example.com;a=<b")
        self.assertEqual(self.load(binding_params=";maddr=[2001:db8::1];+sip.instance=\"<urn:uuid:1>\"").binding_params,
                         ';maddr=[2001:db8::1];+sip.instance="<urn:uuid:1>"')

    def test_unforeseen_values(self) -> None:
        """A value no check foresaw is still a RowError, never another exception."""
        class Weird:
            def __str__(self) -> str:
                raise RuntimeError("no")

        class WeirdText(str):
            def strip(self, chars: str | None = None) -> str:
                raise RuntimeError("no")

        self.refused("username", username=Weird())
        if not COMPILED:  # compiled code calls str's own strip, never the subclass's: nothing raises
            self.refused("unusable row", id=1, forced_socket=WeirdText("udp:127.0.0.1"))


class PlainUriTests(SynchronousTestCase):
    """The shortcut for plain key URIs accepts only what the full checks accept."""

    @settings(max_examples=3000, deadline=None)
    @given(st.from_regex(account_module._PLAIN_URI, fullmatch=True))
    def test_plain_uris_pass_the_full_checks(self, text: str) -> None:
        """Every text the shortcut takes, the key checks and the URI parser take too, unchanged."""
        self.assertEqual(account_module._uri_text({"aor": text}, "aor", key=True), text)
        parse_uri_uncached(text)

    @settings(max_examples=3000, deadline=None)
    @given(st.text(alphabet="sipSIP:@u.-_0123456789<>\" ;\t\r\n%²٣é[]", max_size=24))
    def test_other_texts_get_the_full_checks(self, text: str) -> None:
        """Near misses load exactly as the full checks decide: the same text, or a RowError."""
        try:
            expected = account_module._uri_text({"aor": text}, "aor", key=True)
            if expected:
                parse_uri_uncached(expected)
        except (RowError, SipParseError):
            expected = None
        try:
            loaded: str | None = account_from_row(
                row(aor=text), default_expires=3600, timer_interval=100, sockets=["udp:127.0.0.1:5060"]
            ).aor
        except RowError:
            loaded = None
        self.assertEqual(loaded, expected or None)

    def test_ports_beyond_the_shortcut(self) -> None:
        """Ports the shortcut leaves to the parser still load, or not, as the parser says."""
        load = RowTests.load
        self.assertEqual(load(self, binding_URI="sip:a@192.0.2.1:65535").binding_uri, "sip:a@192.0.2.1:65535")
        for bad in ("sip:a@192.0.2.1:65536", "sip:a@192.0.2.1:0", "sip:a@192.0.2.1:٣", "sip:a@192.0.2.1:05060x"):
            with self.assertRaises(RowError, msg=bad):
                load(self, binding_URI=bad)
