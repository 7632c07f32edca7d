"""A service's bounded tables: one kept object per equal value, memos, and nothing shared between two services."""

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.sip.digest import parse_challenges
from uacregistrant.sip.message import parse_message
from uacregistrant.sip.sharing import Memo, Names, SharedTables, SharedValues
from uacregistrant.sip.uri import parse_uri


class SharedValuesTests(SynchronousTestCase):
    def test_equal_values_share_the_first_object(self) -> None:
        values: SharedValues[str] = SharedValues()
        first = "".join(["bench", ".invalid"])
        second = "".join(["bench.", "invalid"])
        self.assertIsNot(first, second)
        self.assertIs(values.share(first), first)
        self.assertIs(values.share(second), first)

    def test_bounded(self) -> None:
        """Past the limit, new values come back as they are and nothing more is kept."""
        values: SharedValues[tuple[int, str]] = SharedValues(limit=2)
        values.share((200, "OK"))
        values.share((401, "Unauthorized"))
        late = (503, "".join(["Service ", "Unavailable"]))
        self.assertIs(values.share(late), late)
        self.assertIsNot(values.share((503, "Service Unavailable")), late)
        self.assertEqual(len(values), 2)


class MemoTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """Past the limit, results are handed back but not kept."""
        memo: Memo[str, int] = Memo(limit=1)
        self.assertEqual(memo.keep("a", 1), 1)
        self.assertEqual(memo.keep("b", 2), 2)
        self.assertEqual((memo.get("a"), memo.get("b"), len(memo)), (1, None, 1))


class NamesTests(SynchronousTestCase):
    def test_bounded(self) -> None:
        """Each table keeps at most C{limit} spellings, none longer than L{Names.LENGTH_MAX}."""
        names = Names(limit=2)
        for raw in ("Via", "VIA", "vIa"):
            names.remember(names.headers, raw, "via")
        names.remember(names.params, "x" * (Names.LENGTH_MAX + 1), "x")
        self.assertEqual(names.headers, {"Via": "via", "VIA": "via"})
        self.assertEqual(names.params, {})


class SharedTablesTests(SynchronousTestCase):
    """One service's tables: two of them share nothing, and each is bounded."""

    def fill(self, tables: SharedTables, limit: int) -> None:
        """Fill every table of C{tables} to C{limit} through the code that uses them."""
        for i in range(limit):
            tables.layouts.share(parse_challenges(f'Digest realm="r{i}.test", nonce="n"', shared=tables.text)[0].layout())
            tables.replies.share((500 + i, "".join(["Error ", str(i)])))
            tables.expiries.share(int(f"{10_000 + i}"))
            parse_uri(f"sip:registrar{i}.test", tables.uris)
            parse_message(f"SIP/2.0 200 OK\r\nX-Filler-{i}: x\r\n{HEADERS};p{i}=1\r\n\r\n".encode(), names=tables.names)

    def shares(self, tables: SharedTables) -> dict[str, bool]:
        """Which tables of C{tables} still hand out one object for equal new values."""
        realm = 'Digest realm="{}", nonce="n"'
        first = parse_challenges(realm.format("".join(["new", ".test"])), shared=tables.text)[0]
        second = parse_challenges(realm.format("".join(["new.", "test"])), shared=tables.text)[0]
        reply = (486, "".join(["Busy ", "Here"]))
        expiry = int("123456")
        unusual = f"SIP/2.0 200 OK\r\nX-New: x\r\n{HEADERS};new=1\r\n\r\n".encode()
        parse_message(unusual, names=tables.names)
        return {
            "text": first.realm is second.realm,
            "layouts": tables.layouts.share(first.layout()) is tables.layouts.share(second.layout()),
            "replies": tables.replies.share(reply) is tables.replies.share((486, "".join(["Busy", " Here"]))),
            "expiries": tables.expiries.share(expiry) is tables.expiries.share(int("123456")),
            "uris": parse_uri("sip:new.test", tables.uris) is parse_uri("sip:new.test", tables.uris),
            "names": "X-New" in tables.names.headers and "new" in tables.names.params,
        }

    def test_two_services_share_nothing(self) -> None:
        """One service filling its tables to their limits leaves another's interning and memos working."""
        limit = 8
        full = SharedTables(
            text_limit=limit, replies_limit=limit, expiries_limit=limit, layouts_limit=limit, uris_limit=limit, names_limit=limit
        )
        self.fill(full, 50)
        other = SharedTables()
        self.assertEqual(self.shares(other), dict.fromkeys(["text", "replies", "expiries", "layouts", "uris", "names"], True))
        self.assertEqual(self.shares(full), dict.fromkeys(["text", "replies", "expiries", "layouts", "uris", "names"], False))
        # Only its own: "Digest", "realm", "nonce" and the realm; one reply, one expiry, one URI.
        self.assertEqual([len(other.text), len(other.replies), len(other.expiries), len(other.uris)], [4, 1, 1, 1])

    def test_each_table_bounded(self) -> None:
        """However much goes through them, no table grows past its limit."""
        limit = 8
        tables = SharedTables(
            text_limit=limit, replies_limit=limit, expiries_limit=limit, layouts_limit=limit, uris_limit=limit, names_limit=limit
        )
        self.fill(tables, 50)
        sizes = [len(tables.text), len(tables.replies), len(tables.expiries), len(tables.layouts), len(tables.uris)]
        sizes += [len(tables.names.headers), len(tables.names.params)]
        self.assertEqual(sizes, [limit] * 7)
        self.assertEqual(
            [tables.text.limit, tables.replies.limit, tables.expiries.limit, tables.layouts.limit, tables.uris.limit, tables.names.limit],
            [limit] * 6,
        )

    def test_default_limits(self) -> None:
        """The documented limits."""
        tables = SharedTables()
        self.assertEqual(
            [tables.text.limit, tables.replies.limit, tables.expiries.limit, tables.layouts.limit, tables.uris.limit, tables.names.limit],
            [4096, 4096, 4096, 1024, 8192, 1024],
        )


#: A response's required headers, the Via last (for a parameter to be added).
HEADERS = (
    "From: <sip:a@test>;tag=1\r\n"
    "To: <sip:a@test>\r\n"
    "Call-ID: c\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Content-Length: 0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx"
)
