"""
The daemon over UDP, TCP and TLS against Kamailio 5 (registrar, usrloc,
auth_db; tls.so): every row goes over the transport it names and Kamailio
stores its contact on that transport's socket; refreshes share one
connection per transport; the registrar's certificate is checked (RFC
5922) before anything is sent; a client certificate is presented when
configured; a registrar restart makes every stream account register again
over a new connection.

What Kamailio holds is read with its RPC (ul.dump, core.tcp_list); what
the daemon did, with reg_list / reg_stats.
"""

from __future__ import annotations

import re
import signal
import subprocess
from typing import Any

from cryptography import x509

from .helpers import PATIENCE, TWISTD, ProcessTestCase, free_udp_port, make_table, records, wait_for
from .kamailio import KamailioRegistrar
from .test_hardening import stats

DOMAIN = "kam.test"

#: A zone naming the registrar by a DNS name (the identity a sips: URI asks for).
ZONE = """
zone = [
    SOA('registrar.test', mname='ns.registrar.test', rname='root.registrar.test', serial=1, refresh=60, retry=60, expire=60, minimum=60),
    A('registrar.test', '127.0.0.1'),
]
"""


def registered(control: str, users: list[str]) -> bool:
    found = records(control)
    return sorted(found) == sorted(users) and all(r["state"] == "REGISTERED_STATE" for r in found.values())


class TransportTests(ProcessTestCase):
    timeout = 120

    def kamailio(self, users: list[str], **options: Any) -> KamailioRegistrar:
        kamailio = KamailioRegistrar({(user, DOMAIN): f"{user}-pw" for user in users}, **options)
        self.addCleanup(kamailio.destroy)
        kamailio.start()
        self.addCleanup(kamailio.assert_not_crashed)
        self.addCleanup(lambda: print(kamailio.log()[-3000:]))
        return kamailio

    def nameserver(self) -> str:
        """A DNS server on loopback resolving registrar.test to 127.0.0.1; its C{IP:PORT}."""
        port = free_udp_port()
        zone = self.directory / "registrar.zone"
        zone.write_text(ZONE)
        self.processes.spawn(
            [*TWISTD, "-n", "--pidfile=", "dns", "--pyzone", str(zone), "--port", str(port), "--interface", "127.0.0.1"],
            "dns",
        )
        wait_for(lambda: "DNSDatagramProtocol starting on" in self.processes.log("dns"))
        return f"127.0.0.1:{port}"

    def row(self, kamailio: KamailioRegistrar, user: str, how: str, local: int, expiry: int = 300) -> dict[str, object]:
        """
        A table row for C{user} sending as C{how}: C{udp}, C{tcp}, C{tls}
        (C{transport=} on the registrar URI, identity 127.0.0.1), C{sips}
        (C{sips:registrar.test} through the proxy C{sips:127.0.0.1},
        identity 127.0.0.1) or C{sips-dns} (C{sips:registrar.test}, resolved
        by L{nameserver}, identity registrar.test).
        """
        row: dict[str, object] = {"aor": f"sip:{user}@{DOMAIN}", "username": user, "password": f"{user}-pw", "expiry": expiry}
        if how == "udp":
            row.update(registrar=kamailio.uri, binding_URI=f"sip:{user}@127.0.0.1:{local}")
        elif how == "tcp":
            row.update(registrar=kamailio.tcp_uri, binding_URI=f"sip:{user}@127.0.0.1:{local};transport=tcp")
        elif how == "tls":
            row.update(registrar=kamailio.tls_uri, binding_URI=f"sip:{user}@127.0.0.1:{local};transport=tls")
        elif how == "sips":
            row.update(registrar=f"sips:registrar.test:{kamailio.tls_port}", proxy=f"sips:127.0.0.1:{kamailio.tls_port}",
                       binding_URI=f"sips:{user}@127.0.0.1:{local}")
        elif how == "sips-dns":
            row.update(registrar=f"sips:registrar.test:{kamailio.tls_port}", binding_URI=f"sips:{user}@127.0.0.1:{local}")
        else:
            raise ValueError(how)
        return row

    def daemon(self, kamailio: KamailioRegistrar, rows: dict[str, str], *args: str, expiry: int = 300, ca: bool = True) -> str:
        """Start the daemon for C{rows} (C{{user: how}}, see L{row}); return its control endpoint."""
        local = free_udp_port()
        db = self.directory / "registrant.db"
        make_table(db, [self.row(kamailio, user, how, local, expiry) for user, how in rows.items()])
        options = ["--db-url", f"sqlite:{db}", "--listen", f"udp:127.0.0.1:{local}", "--hash-size", "0",
                   "--timer-interval", "4", "--sip-t1", "100"]
        if ca and kamailio.ca_file is not None:
            options += ["--tls-ca", str(kamailio.ca_file)]
        self.child, control = self.processes.daemon([*options, *args])
        # Stopped before Kamailio (cleanups run last first): its shutdown
        # un-registers at a registrar that still answers, without waiting.
        self.addCleanup(lambda: print(self.processes.log("daemon")[-5000:]))
        self.addCleanup(self.stop_daemon)
        return control

    def stop_daemon(self) -> int:
        """SIGTERM the daemon (it un-registers) and wait for it to exit; its exit status."""
        if self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
                raise AssertionError("the daemon did not exit within PATIENCE after SIGTERM")
        return self.child.returncode

    def registers_from(self, kamailio: KamailioRegistrar, transport: str) -> set[str]:
        """The source addresses of the REGISTERs Kamailio received over C{transport}."""
        return {source for _, source, over in kamailio.requests() if over == transport}

    def assert_transports(self, kamailio: KamailioRegistrar, rows: dict[str, str]) -> dict[str, int]:
        """Every REGISTER Kamailio received for a row came over that row's transport; the count per transport."""
        counts = {"udp": 0, "tcp": 0, "tls": 0}
        for to, source, over in kamailio.requests():
            user = to.split(":", 1)[1].split("@")[0]
            expected = "tls" if rows[user].startswith("sips") else rows[user]
            self.assertEqual(over, expected, (to, source, over))
            counts[over] += 1
        return counts

    def assert_stored(self, kamailio: KamailioRegistrar, control: str, rows: dict[str, str]) -> dict[str, dict[str, str]]:
        """
        Kamailio holds one contact per user, on the socket of the transport
        its row asks for (never UDP for a stream row); reg_list names that
        transport and target.  Returns the contacts by user.
        """
        found = records(control)
        contacts = kamailio.contacts()
        by_user: dict[str, dict[str, str]] = {}
        for user, how in rows.items():
            transport = "tls" if how.startswith("sips") else how
            self.assertEqual(len(contacts.get(f"{user}@{DOMAIN}", [])), 1, contacts)
            (contact,) = contacts[f"{user}@{DOMAIN}"]
            self.assertEqual(contact["Socket"], kamailio.socket(transport), (user, contact))
            self.assertEqual(contact["Call-ID"], found[user]["call_id"])
            if transport == "udp":
                self.assertLessEqual(int(contact["Tcpconn-Id"]), 0, contact)
            else:
                self.assertGreater(int(contact["Tcpconn-Id"]), 0, contact)
            self.assertEqual(found[user]["transport"], transport, found[user])
            port = {"udp": kamailio.port, "tcp": kamailio.tcp_port, "tls": kamailio.tls_port}[transport]
            self.assertEqual(found[user]["target"], f"127.0.0.1:{port}", found[user])
            by_user[user] = contact
        return by_user

    def test_each_row_its_transport(self) -> None:
        """
        UDP, TCP, TLS and sips (through a sips: proxy) rows, MD5 digest:
        each registers over its own transport, challenged once; the TLS and
        sips rows (same address, same identity 127.0.0.1) share a connection.
        Shutting down un-registers each over its own transport too.
        """
        rows = {"udp1": "udp", "tcp1": "tcp", "tls1": "tls", "sips1": "sips"}
        kamailio = self.kamailio(list(rows), tcp=True, tls=True)
        control = self.daemon(kamailio, rows)
        wait_for(lambda: registered(control, list(rows)))
        contacts = self.assert_stored(kamailio, control, rows)
        for user, contact in contacts.items():
            self.assertEqual(int(contact["CSeq"]), 2, contact)  # challenged (401), then accepted
        self.assertEqual(contacts["tls1"]["Tcpconn-Id"], contacts["sips1"]["Tcpconn-Id"])
        self.assertTrue(contacts["sips1"]["Address"].startswith("sips:sips1@127.0.0.1:"), contacts["sips1"])
        # Every REGISTER went over the transport of its row.
        registers = self.assert_transports(kamailio, rows)
        # Challenged once each; UDP may have retransmitted, streams never do.
        self.assertGreaterEqual(registers["udp"], 2)
        self.assertEqual((registers["tcp"], registers["tls"]), (2, 4))
        self.assertEqual({c["type"] for c in kamailio.tcp_connections()}, {"TCP", "TLS"})
        self.assertEqual(len(kamailio.tcp_connections()), 2, kamailio.tcp_connections())
        counters = stats(control)
        self.assertEqual(counters["sip"]["connections_opened"], 2, counters)
        self.assertEqual(counters["sip"]["connection_failures"], 0, counters)
        self.assertEqual(counters["transport"]["connections"], 2, counters)
        self.assertEqual(counters["transport"]["tls_verify"], "on", counters)
        # Shutting down un-registers every row, each over its own transport.
        self.assertIn(self.stop_daemon(), (0, -signal.SIGTERM))  # twistd ends by the signal
        self.assertEqual(kamailio.contacts(), {})
        after = self.assert_transports(kamailio, rows)
        self.assertGreater(after["udp"], registers["udp"])
        self.assertGreater(after["tcp"], registers["tcp"])
        self.assertGreaterEqual(after["tls"], registers["tls"] + 2)

    def test_sha256_over_streams(self) -> None:
        """
        Kamailio challenging with SHA-256 (and checking the answer with
        SHA-256 only): TCP, TLS and sips rows register.
        """
        rows = {"tcp2": "tcp", "tls2": "tls", "sips2": "sips"}
        kamailio = self.kamailio(list(rows), tcp=True, tls=True, algorithm="SHA-256")
        control = self.daemon(kamailio, rows)
        wait_for(lambda: registered(control, list(rows)))
        self.assert_stored(kamailio, control, rows)
        self.assert_transports(kamailio, rows)

    def test_refreshes_share_one_connection_per_transport(self) -> None:
        """
        Six accounts refreshing every few seconds, three over TCP and three
        over TLS: after each has refreshed (same Call-ID, higher CSeq at
        Kamailio) the daemon has still opened only two connections, and
        Kamailio has one TCP and one TLS connection, from which every
        REGISTER came.
        """
        rows = {f"tcp{i}": "tcp" for i in range(3)} | {f"tls{i}": "tls" for i in range(3)}
        kamailio = self.kamailio(list(rows), tcp=True, tls=True, min_expires=1)
        # Expiry 6: refreshed 3 s before it ends, every 3 s.
        control = self.daemon(kamailio, rows, expiry=6)
        wait_for(lambda: registered(control, list(rows)))
        first = self.assert_stored(kamailio, control, rows)

        def refreshed() -> bool:
            now = kamailio.contacts()
            return all(
                len(now.get(f"{user}@{DOMAIN}", [])) == 1
                and now[f"{user}@{DOMAIN}"][0]["Call-ID"] == first[user]["Call-ID"]
                and int(now[f"{user}@{DOMAIN}"][0]["CSeq"]) > int(first[user]["CSeq"])
                for user in rows
            )

        wait_for(refreshed)
        for user, record in records(control).items():
            # Registered, or refreshing right now; never failed.
            self.assertIn(record["state"], ("REGISTERED_STATE", "REGISTERING_STATE", "AUTHENTICATING_STATE"), record)
            self.assertIsNone(record["last_error"], record)
        now = self.assert_stored(kamailio, control, rows)
        self.assert_transports(kamailio, rows)
        self.assertEqual(len({now[user]["Tcpconn-Id"] for user in rows if rows[user] == "tcp"}), 1, now)
        self.assertEqual(len({now[user]["Tcpconn-Id"] for user in rows if rows[user] == "tls"}), 1, now)
        self.assertEqual(kamailio.connection_count("tcp"), 1, kamailio.tcp_connections())
        self.assertEqual(kamailio.connection_count("tls"), 1, kamailio.tcp_connections())
        self.assertEqual(len(kamailio.tls_connections()), 1)
        self.assertEqual(len(self.registers_from(kamailio, "tcp")), 1, self.registers_from(kamailio, "tcp"))
        self.assertEqual(len(self.registers_from(kamailio, "tls")), 1, self.registers_from(kamailio, "tls"))
        counters = stats(control)
        self.assertEqual(counters["sip"]["connections_opened"], 2, counters)
        self.assertEqual(counters["sip"]["connections_lost"], 0, counters)
        self.assertEqual(counters["sip"]["lapsed_registrations"], 0, counters)
        self.assertEqual(counters["transport"]["connections"], 2, counters)

    def test_wrong_certificate_name_refused(self) -> None:
        """
        Kamailio's certificate names only other.test: neither the row
        naming 127.0.0.1 nor the one naming registrar.test (found through
        DNS) registers, last_error says whose certificate it is, and no
        REGISTER ever left the daemon (Kamailio logged none, holds none).
        """
        rows = {"ip1": "tls", "name1": "sips-dns"}
        kamailio = self.kamailio(list(rows), tls=True, tls_dns=["other.test"], tls_ips=[])
        control = self.daemon(kamailio, rows, "--nameserver", self.nameserver(), "--retry-interval", "2", "--retry-max-interval", "4")
        # Both tried, and tried again after their back-off (or, should the
        # check let one through, a connection opened: the assertions below say so).
        wait_for(lambda: stats(control)["sip"]["connection_failures"] >= 4 or stats(control)["sip"]["connections_opened"])
        found = records(control)
        for user, domain in (("ip1", "127.0.0.1"), ("name1", "registrar.test")):
            self.assertNotEqual(found[user]["state"], "REGISTERED_STATE", found[user])
            self.assertIn(f"connection to tls:127.0.0.1:{kamailio.tls_port} failed", found[user]["last_error"], found[user])
            self.assertIn(f"is for DNS:other.test; not for {domain}", found[user]["last_error"], found[user])
        counters = stats(control)
        self.assertEqual(counters["sip"]["requests_sent"], 0, counters)
        self.assertEqual(counters["sip"]["connections_opened"], 0, counters)
        self.assertEqual(kamailio.contacts(), {})
        self.assertNotIn("request REGISTER", kamailio.log())

    def test_no_verify_accepts_wrong_name(self) -> None:
        """--tls-no-verify (and no CA): the same registrar is used, and reg_stats says certificates go unchecked."""
        rows = {"ip2": "tls", "name2": "sips-dns"}
        kamailio = self.kamailio(list(rows), tls=True, tls_dns=["other.test"], tls_ips=[])
        control = self.daemon(kamailio, rows, "--nameserver", self.nameserver(), "--tls-no-verify", ca=False)
        wait_for(lambda: registered(control, list(rows)))
        self.assert_stored(kamailio, control, {"ip2": "tls", "name2": "sips"})
        self.assertEqual(stats(control)["transport"]["tls_verify"], "off")

    def test_client_certificate_presented(self) -> None:
        """Kamailio requires a client certificate: with --tls-cert/--tls-key it gets ours, verified against its CA."""
        rows = {"cert1": "tls", "cert2": "sips"}
        kamailio = self.kamailio(list(rows), tls=True, require_client_cert=True)
        assert kamailio.ca is not None
        cert, key = kamailio.ca.issue(self.directory / "client", common_name="uacregistrant client", client=True)
        control = self.daemon(kamailio, rows, "--tls-cert", str(cert), "--tls-key", str(key))
        wait_for(lambda: registered(control, list(rows)))
        self.assert_stored(kamailio, control, rows)
        # Kamailio logs the certificate each request came with: ours, verified.
        serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        peers = re.findall(r"tls peer (cn \[.*\] verified \[\d\])", kamailio.log())
        self.assertGreaterEqual(len(peers), 4, peers)  # two rows, challenged once each
        self.assertEqual(set(peers), {f"cn [uacregistrant client] issuer [Kamailio test CA] serial [{serial}] verified [1]"})

    def test_client_certificate_missing(self) -> None:
        """Kamailio requires a client certificate and the daemon has none: nothing registers, last_error says why."""
        rows = {"nocert": "tls"}
        kamailio = self.kamailio(list(rows), tls=True, require_client_cert=True)
        control = self.daemon(kamailio, rows, "--retry-interval", "2", "--retry-max-interval", "4")
        wait_for(lambda: records(control).get("nocert", {}).get("last_error"))
        record = records(control)["nocert"]
        self.assertNotEqual(record["state"], "REGISTERED_STATE", record)
        self.assertIn(f"tls:127.0.0.1:{kamailio.tls_port}", record["last_error"])
        self.assertIn("certificate required", record["last_error"])
        self.assertEqual(kamailio.contacts(), {})
        self.assertNotIn("request REGISTER", kamailio.log())

    def test_registrar_restart(self) -> None:
        """
        Kamailio restarts (its location lives in memory: every binding is
        gone, and so are the connections): every TCP and TLS account
        registers again at once over a new connection, long before its
        refresh, and nothing stays unregistered.
        """
        rows = {"tcpa": "tcp", "tcpb": "tcp", "tlsa": "tls", "sipsa": "sips"}
        kamailio = self.kamailio(list(rows), tcp=True, tls=True)
        control = self.daemon(kamailio, rows, "--retry-interval", "2", "--retry-max-interval", "4")
        wait_for(lambda: registered(control, list(rows)))
        self.assert_stored(kamailio, control, rows)
        self.assertEqual(kamailio.connection_count("tcp"), 1)
        self.assertEqual(kamailio.connection_count("tls"), 1)
        self.assertEqual(stats(control)["sip"]["connections_opened"], 2)
        earlier = kamailio.requests()
        old_sources = {source for _, source, _ in earlier}

        kamailio.restart()  # a new process: whatever its location holds now was registered since
        # Every binding is back, well before the 300 s registrations would
        # have been refreshed.
        wait_for(lambda: len(kamailio.contacts()) == len(rows))
        wait_for(lambda: registered(control, list(rows)))
        self.assert_stored(kamailio, control, rows)
        self.assert_transports(kamailio, rows)
        # Over one new connection per transport.
        since = kamailio.requests()[len(earlier):]
        self.assertEqual({to.split(":")[1].split("@")[0] for to, _, _ in since}, set(rows), since)
        new_sources = {over: {source for _, source, o in since if o == over} for over in ("tcp", "tls")}
        self.assertEqual([len(new_sources["tcp"]), len(new_sources["tls"])], [1, 1], since)
        self.assertFalse((new_sources["tcp"] | new_sources["tls"]) & old_sources, (old_sources, since))
        self.assertEqual(kamailio.connection_count("tcp"), 1, kamailio.tcp_connections())
        self.assertEqual(kamailio.connection_count("tls"), 1, kamailio.tcp_connections())
        counters = stats(control)
        # Both connections were lost, and two new ones are open.  (A connection
        # the old Kamailio's kernel accepted while it exited would be opened
        # and lost once more: counted, but harmless.)
        self.assertGreaterEqual(counters["sip"]["connections_lost"], 2, counters)
        self.assertEqual(counters["sip"]["connections_opened"], counters["sip"]["connections_lost"] + 2, counters)
        self.assertEqual(counters["transport"]["connections"], 2, counters)
        self.assertEqual(counters["sip"]["lapsed_registrations"], 0, counters)
        log = self.processes.log("daemon")
        self.assertIn(f"connection to tcp:127.0.0.1:{kamailio.tcp_port} lost", log)
        self.assertIn(f"connection to tls:127.0.0.1:{kamailio.tls_port} lost", log)
        # The records re-registered because their connection broke (RFC 5626 §4.4.1).
        self.assertIn(f"2 records registered over tcp:127.0.0.1:{kamailio.tcp_port} register again", log)
        self.assertIn(f"2 records registered over tls:127.0.0.1:{kamailio.tls_port} register again", log)
