"""
RFC 3263 fail-over against a real DNS server (twistd dns, serving SRV
records from a zone written by the test) and the packaged test registrar:
the first SRV target is dead, the second answers.
"""

from __future__ import annotations

from .helpers import TWISTD, ProcessTestCase, free_udp_port, make_table, records, wait_for
from .test_hardening import stats

ZONE = """
zone = [
    SOA('reg.test', mname='ns.reg.test', rname='root.reg.test', serial=1, refresh=60, retry=60, expire=60, minimum=60),
    SRV('_sip._udp.reg.test', 10, 0, {dead}, 'dead.reg.test', ttl=300),
    SRV('_sip._udp.reg.test', 20, 0, {live}, 'live.reg.test', ttl=300),
    A('dead.reg.test', '127.0.0.1'),
    A('live.reg.test', '127.0.0.1'),
]
"""


class FailOverTests(ProcessTestCase):
    timeout = 120

    def test_dead_first_srv_target(self) -> None:
        """
        Every account times out once at the dead primary (Timer F, 6.4 s
        with --sip-t1 100), then registers at the backup at once instead of
        after its back-off; last_error named the dead target meanwhile.
        """
        users = {f"u{i}": {"password": "p"} for i in range(3)}
        live = self.processes.registrar(users)
        dead = free_udp_port()  # nothing listens there: requests vanish
        dns_port = free_udp_port()
        zone = self.directory / "reg.zone"
        zone.write_text(ZONE.format(dead=dead, live=live))
        self.processes.spawn(
            [*TWISTD, "-n", "--pidfile=", "dns", "--pyzone", str(zone), "--port", str(dns_port), "--interface", "127.0.0.1"],
            "dns",
        )
        wait_for(lambda: "DNSDatagramProtocol starting on" in self.processes.log("dns"))
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
