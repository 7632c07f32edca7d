"""Settings and the twistd plugin options."""

import os

from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.app.settings import ConfigError, build_settings, secure_control_endpoint
from uacregistrant.app.tap import Options


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
            ({"listen": ["sctp:1.2.3.4:5060"]}, "listen"),
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
        settings = options.settings
        self.assertEqual((settings.hash_size, settings.timer_interval), (2, 64))
        self.assertEqual(settings.table.columns["binding_URI"], "contact")
        self.assertEqual([s.name for s in settings.listen], ["udp:127.0.0.1:5070", "udp:127.0.0.2:5070"])

    def test_bad_toml(self) -> None:
        """An unreadable or invalid config file is a usage error saying why."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("hash_size = = 1\n")
        for config in [path, os.path.join(self.mktemp(), "missing.toml")]:
            with self.assertRaises(UsageError) as caught:
                Options().parseOptions(["--config", config])
            self.assertIn(config, str(caught.exception))

    def test_bad_settings_are_usage_errors(self) -> None:
        """Settings are validated in postOptions, as Twisted's own plugins do."""
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["--hash-size", "3", "--timer-interval", "4"])
        self.assertIn("timer_interval=4 must be at least 2^hash_size=8", str(caught.exception))
        with self.assertRaises(UsageError) as caught:
            Options().parseOptions(["--db-url", "mysql://x"])
        self.assertIn("unsupported db_url", str(caught.exception))

    def test_unknown_option(self) -> None:
        """Unknown options are usage errors."""
        with self.assertRaises(UsageError):
            Options().parseOptions(["--no-such-thing"])


class NameserverTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """IP, IP:PORT and [IPv6]:PORT; port 53 by default; empty means the system's resolver."""
        self.assertEqual(build_settings({}).nameservers, ())
        self.assertEqual(build_settings({"nameserver": "127.0.0.1"}).nameservers, (("127.0.0.1", 53),))
        self.assertEqual(build_settings({"nameserver": "127.0.0.1:5353"}).nameservers, (("127.0.0.1", 5353),))
        self.assertEqual(build_settings({"nameserver": ["[::1]:5353", "::1"]}).nameservers, (("::1", 5353), ("::1", 53)))

    def test_refused(self) -> None:
        """Host names, bad ports and Unicode digits are refused naming the value."""
        for bad in ("dns.example", "127.0.0.1:0", "127.0.0.1:\u00b2", "[::1", "127.0.0.1:70000"):
            with self.assertRaises(ConfigError, msg=bad):
                build_settings({"nameserver": bad})



class TransportSettingsTests(SynchronousTestCase):
    def test_stream_listen(self) -> None:
        """tcp: and tls: listen sockets are streams; tls defaults to port 5061."""
        settings = build_settings({"listen": ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "tls:127.0.0.1"]})
        self.assertEqual([spec.name for spec in settings.stream_listen], ["tcp:127.0.0.1:5060", "tls:127.0.0.1:5061"])

    def test_keepalive_and_user_agent(self) -> None:
        """--keepalive is whole seconds (0 = off); the User-Agent is printable ASCII or empty."""
        self.assertEqual(build_settings({}).keepalive, 30)
        self.assertEqual(build_settings({"keepalive": "0"}).keepalive, 0)
        self.assertEqual(build_settings({"user_agent": ""}).user_agent, "")
        for bad in ({"keepalive": "-1"}, {"keepalive": "3601"}, {"user_agent": "a\r\nX-Evil: 1"}, {"user_agent": "\u00e9"}):
            with self.assertRaises(ConfigError, msg=str(bad)):
                build_settings(bad)

    def test_tls_options(self) -> None:
        """Certificate and key go together; --tls-no-verify is a flag, off by default."""
        self.assertEqual((build_settings({}).tls_ca, build_settings({}).tls_no_verify), (None, False))
        with self.assertRaises(ConfigError):
            build_settings({"tls_cert": "cert.pem"})
        options = Options()
        options.parseOptions(["--tls-no-verify", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem"])
        settings = options.settings
        self.assertEqual((settings.tls_no_verify, settings.tls_cert, settings.tls_key, settings.tls_ca), (True, "c.pem", "k.pem", "ca.pem"))

    def test_nameserver_option_repeats(self) -> None:
        """--nameserver may be given more than once."""
        options = Options()
        options.parseOptions(["--nameserver", "127.0.0.1:5353", "--nameserver", "::1"])
        self.assertEqual(options.settings.nameservers, (("127.0.0.1", 5353), ("::1", 53)))


class OperationsSettingsTests(SynchronousTestCase):
    """--metrics, --mi-http (writes only by choice, and only on loopback), --log-format."""

    def test_http_endpoints(self) -> None:
        """tcp:PORT listens on loopback; an interface must be an IP address."""
        settings = build_settings({"metrics": "tcp:9120", "mi_http": "tcp6:8888"})
        assert settings.metrics is not None and settings.mi_http is not None
        self.assertEqual((settings.metrics.port, settings.metrics.interface), (9120, "127.0.0.1"))
        self.assertEqual(settings.mi_http.interface, "::1")
        self.assertEqual(build_settings({"metrics": "tcp:9120:interface=192.0.2.1"}).metrics.interface, "192.0.2.1")  # type: ignore[union-attr]
        for bad in ("unix:/x", "tcp:99999", "tcp:٩١", "tcp:9120:interface=example.com", "tcp:1:what=2"):
            with self.assertRaises(ConfigError, msg=bad):
                build_settings({"metrics": bad})

    def test_mi_writes_only_on_loopback(self) -> None:
        """MI writes are off by default; on only by choice, and never where others reach the MI."""
        self.assertFalse(build_settings({"mi_http": "tcp:8888"}).mi_http_writes)
        options = Options()
        options.parseOptions(["--mi-http", "tcp:8888", "--mi-http-writes"])
        self.assertTrue(options.settings.mi_http_writes)
        for values in ({"mi_http": "tcp:8888:interface=0.0.0.0", "mi_http_writes": True}, {"mi_http_writes": True}):
            with self.assertRaises(ConfigError) as caught:
                build_settings(values)
            self.assertIn("loopback", str(caught.exception))

    def test_log_format_and_mi_root(self) -> None:
        """log_format is text or json; mi_root a plain path segment."""
        self.assertEqual(build_settings({"log_format": "json"}).log_format, "json")
        for values in ({"log_format": "xml"}, {"mi_root": "a/b"}, {"mi_root": ""}):
            with self.assertRaises(ConfigError, msg=str(values)):
                build_settings(values)
