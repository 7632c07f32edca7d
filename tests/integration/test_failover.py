"""
RFC 3263 fail-over against a real DNS server (twistd dns, serving NAPTR
and SRV records from a zone written by the test): the first SRV target is
dead, the second answers.  Over UDP the registrar is the packaged test
registrar; over TCP it is SIPp (C{-t t1}, see test_sipp.TcpRegistrar).
"""

from __future__ import annotations

import re

from .helpers import TWISTD, ProcessTestCase, free_udp_and_tcp_port, free_udp_port, make_table, records, require_binary, wait_for
from .test_hardening import stats
from .test_sipp import TcpRegistrar, free_port, free_tcp_port

ZONE = """
zone = [
    SOA('reg.test', mname='ns.reg.test', rname='root.reg.test', serial=1, refresh=60, retry=60, expire=60, minimum=60),
    SRV('_sip._udp.reg.test', 10, 0, {dead}, 'dead.reg.test', ttl=300),
    SRV('_sip._udp.reg.test', 20, 0, {live}, 'live.reg.test', ttl=300),
    A('dead.reg.test', '127.0.0.1'),
    A('live.reg.test', '127.0.0.1'),
]
"""


#: NAPTR offers TCP only; its SRV lists a dead target first. (twistd dns
#: --pyzone: NAPTR's flags, service and regexp must be bytes.)
TCP_ZONE = """
zone = [
    SOA('tcp.test', mname='ns.tcp.test', rname='root.tcp.test', serial=1, refresh=60, retry=60, expire=60, minimum=60),
    NAPTR('tcp.test', 10, 50, b's', b'SIP+D2T', b'', '_sip._tcp.tcp.test', ttl=300),
    SRV('_sip._tcp.tcp.test', 10, 0, {dead}, 'dead.tcp.test', ttl=300),
    SRV('_sip._tcp.tcp.test', 20, 0, {live}, 'live.tcp.test', ttl=300),
    A('dead.tcp.test', '127.0.0.1'),
    A('live.tcp.test', '127.0.0.1'),
]
"""

#: NAPTR offers UDP (listed first, better preference, worse order) and TCP
#: (order 10): TCP must win (RFC 3263 §4.1: order, then preference).  Plain
#: SRV without NAPTR would pick _sip._udp, which leads to a live registrar too.
BOTH_ZONE = """
zone = [
    SOA('both.test', mname='ns.both.test', rname='root.both.test', serial=1, refresh=60, retry=60, expire=60, minimum=60),
    NAPTR('both.test', 20, 10, b's', b'SIP+D2U', b'', '_sip._udp.both.test', ttl=300),
    NAPTR('both.test', 10, 50, b's', b'SIP+D2T', b'', '_sip._tcp.both.test', ttl=300),
    SRV('_sip._udp.both.test', 10, 0, {udp}, 'udp.both.test', ttl=300),
    SRV('_sip._tcp.both.test', 10, 0, {tcp}, 'tcp.both.test', ttl=300),
    A('udp.both.test', '127.0.0.1'),
    A('tcp.both.test', '127.0.0.1'),
]
"""


class FailOverTests(ProcessTestCase):
    timeout = 120

    def serve_zone(self, text: str) -> int:
        """Start twistd dns serving the zone C{text} on 127.0.0.1 (UDP); return its port."""
        dns_port = free_udp_and_tcp_port()  # twistd dns listens on UDP and TCP
        zone = self.directory / "test.zone"
        zone.write_text(text)
        dns = self.processes.spawn(
            [*TWISTD, "-n", "--pidfile=", "dns", "--pyzone", str(zone), "--port", str(dns_port), "--interface", "127.0.0.1"],
            "dns",
        )

        def started() -> bool:
            if dns.poll() is not None:
                raise AssertionError(f"twistd dns exited: {self.processes.log('dns')[-2000:]}")
            return "DNSDatagramProtocol starting on" in self.processes.log("dns")

        wait_for(started)
        return dns_port

    def start_daemon(self, domain: str, passwords: dict[str, str], dns_port: int) -> str:
        """
        The daemon (UDP and TCP sockets) with one row per user at
        C{sip:DOMAIN}, so RFC 3263 picks the transport, and a one-hour
        back-off that only fail-over could beat; its control endpoint.
        """
        local = free_port()
        db = self.directory / "registrant.db"
        make_table(db, [
            {"registrar": f"sip:{domain}", "aor": f"sip:{user}@test.invalid", "username": user, "password": password,
             "binding_URI": f"sip:{user}@127.0.0.1:{local}", "expiry": 600}
            for user, password in passwords.items()
        ])
        _, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--listen", f"tcp:127.0.0.1:{local}",
             "--hash-size", "0", "--timer-interval", "10", "--sip-t1", "100", "--retry-interval", "3600",
             "--retry-max-interval", "3600", "--nameserver", f"127.0.0.1:{dns_port}"]
        )
        self.addCleanup(lambda: print(self.processes.log("daemon")[-3000:]))
        return control

    def test_dead_first_srv_target(self) -> None:
        """
        Every account times out once at the dead primary (Timer F, 6.4 s
        with --sip-t1 100), then registers at the backup at once instead of
        after its back-off; last_error named the dead target meanwhile.
        """
        users = {f"u{i}": {"password": "p"} for i in range(3)}
        live = self.processes.registrar(users)
        dead = free_udp_port()  # nothing listens there: requests vanish
        dns_port = self.serve_zone(ZONE.format(dead=dead, live=live))
        local = free_udp_port()
        db = self.directory / "registrant.db"
        make_table(db, [
            {"registrar": "sip:reg.test", "aor": f"sip:{user}@test.invalid", "username": user, "password": "p",
             "binding_URI": f"sip:{user}@127.0.0.1:{local}", "expiry": 600}
            for user in users
        ])
        _, control = self.processes.daemon(
            ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0", "--timer-interval", "10",
             "--sip-t1", "100", "--retry-interval", "3600", "--retry-max-interval", "3600", "--nameserver", f"127.0.0.1:{dns_port}"]
        )
        self.addCleanup(lambda: print(self.processes.log("daemon")[-3000:]))
        # With a 1-hour back-off, only fail-over can register them within the test.
        wait_for(lambda: all(r["state"] == "REGISTERED_STATE" for r in records(control).values()) and len(records(control)) == 3)
        self.assertGreaterEqual(stats(control)["sip"]["fail_overs"], 3)
        self.assertIn("user=u0 ", self.processes.log("registrar"))

    def test_dead_first_tcp_target(self) -> None:
        """
        NAPTR → SIP+D2T → SRV _sip._tcp with a closed port first: the
        connection is refused at once, which fails the target (RFC 3263
        §4.3); the records that tried it move to the live target (SIPp over
        TCP) at once instead of after their one-hour back-off, and every
        account registers there over one connection.
        """
        sipp = require_binary("sipp", "sip-tester")
        accounts = 5
        live = TcpRegistrar(self.processes, sipp)
        dead = free_tcp_port()  # nothing listens there: connecting is refused
        dns_port = self.serve_zone(TCP_ZONE.format(dead=dead, live=live.port))
        control = self.start_daemon("tcp.test", {f"t{i}": f"pw-t{i}" for i in range(accounts)}, dns_port)
        listed = wait_for(
            lambda: len(r := records(control)) == accounts and all(x["state"] == "REGISTERED_STATE" for x in r.values()) and r
        )
        self.assertEqual({(r["transport"], r["target"]) for r in listed.values()}, {("tcp", f"127.0.0.1:{live.port}")})
        counters = stats(control)
        sip = counters["sip"]
        # The dead target was tried and refused; only the live one was ever connected.
        self.assertGreaterEqual(sip["fail_overs"], 1, sip)
        self.assertGreaterEqual(sip["connection_failures"], 1, sip)
        self.assertEqual((sip["connections_opened"], counters["transport"]["connections"]), (1, 1), counters)
        # Each record that tried the dead target logged that failure (its
        # last_error then) and failed over; none timed out.
        log = self.processes.log("daemon")
        refused = set(re.findall(
            rf"sip:(t\d+)@test\.invalid .*: REGISTER_TIMEOUT_STATE: connection to tcp:127\.0\.0\.1:{dead} failed: connection refused", log
        ))
        self.assertTrue(refused, log[-3000:])
        self.assertEqual(len(refused), sip["fail_overs"], (refused, sip))
        self.assertEqual(sip["timeouts"], 0, sip)
        live.assert_clean(self, accounts)

    def test_naptr_order_prefers_tcp(self) -> None:
        """A NAPTR offering SIP+D2U (order 20) and SIP+D2T (order 10): the daemon registers over TCP."""
        sipp = require_binary("sipp", "sip-tester")
        tcp = TcpRegistrar(self.processes, sipp)
        udp = self.processes.registrar({"n0": {"password": "pw-n0"}})
        dns_port = self.serve_zone(BOTH_ZONE.format(udp=udp, tcp=tcp.port))
        control = self.start_daemon("both.test", {"n0": "pw-n0"}, dns_port)
        record = wait_for(lambda: (r := records(control).get("n0")) and r["state"] == "REGISTERED_STATE" and r)
        self.assertEqual((record["transport"], record["target"]), ("tcp", f"127.0.0.1:{tcp.port}"))
        self.assertEqual(stats(control)["sip"]["fail_overs"], 0)
        # Looked at before SIPp stops: its connection's loss makes the record
        # register again, and with TCP refused then it rightly fails over to UDP.
        self.assertNotIn("user=n0", self.processes.log("registrar"))
        tcp.assert_clean(self, 1)
