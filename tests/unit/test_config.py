"""Tests for settings, options, sockets and table rows."""

import os

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.account import RowError, account_from_row
from uacregistrant.settings import ConfigError, build_settings, secure_control_endpoint
from uacregistrant.sockets import SocketSpecError, normalise_socket
from uacregistrant.tap import Options


def row(**kw: object) -> dict:
    values: dict = {
        "id": 7, "aor": "sip:alice@example.com", "registrar": "sip:example.com", "binding_URI": "sip:alice@192.0.2.1",
        "expiry": 3600, "state": 0,
    }
    values.update(kw)
    return values


class SocketTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """Protocol and port are optional; IPv6 needs brackets."""
        self.assertEqual(normalise_socket("10.0.0.1"), "udp:10.0.0.1:5060")
        self.assertEqual(normalise_socket("UDP:10.0.0.1:5070"), "udp:10.0.0.1:5070")
        self.assertEqual(normalise_socket("udp:[::1]:5062"), "udp:[::1]:5062")
        for bad in ["tcp:1.2.3.4:5060", "udp:host.example:5060", "1.2.3.4:70000", "::1", "udp:[::1"]:
            with self.assertRaises(SocketSpecError, msg=bad):
                normalise_socket(bad)


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
        self.refused("unusable row", id=1, forced_socket=WeirdText("udp:127.0.0.1"))


class SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """The defaults mirror the seed and are safe."""
        settings = build_settings({})
        self.assertEqual((settings.hash_size, settings.timer_interval, settings.sip_t1), (1, 100, 500))
        self.assertEqual([c.description for c in settings.control], ["unix:uacregistrant.ctl:mode=600"])
        self.assertEqual([s.name for s in settings.listen], ["udp:0.0.0.0:5060"])
        self.assertEqual(settings.bucket_interval, 50)

    def test_refusals(self) -> None:
        """Bad values are refused with a message naming them."""
        cases = [
            ({"hash_size": 3, "timer_interval": 4}, "2^hash_size"),
            ({"hash_size": 21}, "hash_size"),
            ({"sip_t1": 0}, "sip_t1"),
            ({"send_rate": 0}, "send_rate"),
            ({"listen": ["tcp:1.2.3.4:5060"]}, "listen"),
            ({"listen": ["udp:1.2.3.4:5060", "1.2.3.4"]}, "twice"),
            ({"control": ["tcp:5000:interface=0.0.0.0"]}, "loopback"),
            ({"bogus": 1}, "bogus"),
            ({"hash_size": "x"}, "hash_size"),
            ({"default_expires": 2**40}, "default_expires"),
            ({"default_expires": 100}, "timer_interval"),
            ({"db_poll": "nan"}, "db_poll"),
            ({"db_poll": float("nan")}, "db_poll"),
            ({"db_poll": float("inf")}, "db_poll"),
            ({"db_poll": "1e-300"}, "db_poll"),
            ({"db_poll": 0.5}, "db_poll"),
            ({"send_rate": "inf"}, "send_rate"),
            ({"send_rate": 1e-300}, "send_rate"),
            ({"retry_interval": 0.001}, "retry_interval"),
            ({"retry_max_interval": 2**40}, "retry_max_interval"),
            ({"hash_size": "\u00b2"}, "hash_size"),
            ({"timer_interval": "\u0661\u0660\u0660"}, "timer_interval"),
            ({"max_in_flight": "1_000"}, "max_in_flight"),
            ({"sip_t1": 2.5}, "sip_t1"),
            ({"listen": ["udp:127.0.0.1:\u00b2"]}, "port"),
            ({"control": ["tcp:\u00b2"]}, "port"),
        ]
        for values, word in cases:
            with self.assertRaises(ConfigError, msg=str(values)) as caught:
                build_settings(values)
            self.assertIn(word, str(caught.exception))

    def test_numbers_within_bounds(self) -> None:
        """Whole numbers and decimals in ASCII digits within bounds are accepted from either source."""
        settings = build_settings({"db_poll": "2.5", "send_rate": 50, "default_expires": "4294967295", "retry_interval": "1"})
        self.assertEqual((settings.db_poll, settings.send_rate, settings.default_expires), (2.5, 50.0, 2**32 - 1))
        self.assertEqual(build_settings({"db_poll": 0}).db_poll, 0)

    def test_secure_control(self) -> None:
        """UNIX sockets default to 0600, TCP to loopback."""
        self.assertEqual(secure_control_endpoint("unix:/run/x.ctl"), "unix:/run/x.ctl:mode=600")
        self.assertEqual(secure_control_endpoint("unix:/run/x.ctl:mode=660"), "unix:/run/x.ctl:mode=660")
        self.assertEqual(secure_control_endpoint("tcp:5028"), "tcp:5028:interface=127.0.0.1")
        self.assertEqual(secure_control_endpoint("tcp:5028:interface=127.0.0.2"), "tcp:5028:interface=127.0.0.2")


class OptionsTests(SynchronousTestCase):
    def test_cli_overrides_toml(self) -> None:
        """TOML (seed spelling) fills in; the command line wins."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('hash_size = 3\ntimer_interval = 64\nbinding_URI_column = "contact"\nlisten = "udp:127.0.0.1:5090"\n')
        options = Options()
        options.parseOptions(["--config", path, "--hash-size", "2", "--listen", "udp:127.0.0.1:5070", "--listen", "udp:127.0.0.2:5070"])
        settings = options.settings()
        self.assertEqual((settings.hash_size, settings.timer_interval), (2, 64))
        self.assertEqual(settings.table.columns["binding_URI"], "contact")
        self.assertEqual([s.name for s in settings.listen], ["udp:127.0.0.1:5070", "udp:127.0.0.2:5070"])

    def test_bad_toml(self) -> None:
        """An unreadable or invalid config file is a ConfigError."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("hash_size = = 1\n")
        for config in [path, os.path.join(self.mktemp(), "missing.toml")]:
            options = Options()
            options.parseOptions(["--config", config])
            with self.assertRaises(ConfigError):
                options.settings()

    def test_unknown_option(self) -> None:
        """Unknown options are usage errors."""
        with self.assertRaises(UsageError):
            Options().parseOptions(["--no-such-thing"])
