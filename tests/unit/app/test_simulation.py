"""
The whole daemon on a fake clock and network against the real test
registrar: bucket walk, pacing, refresh timing, retransmission, filtering.
"""

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.simulation import REGISTRAR, Simulation
from uacregistrant.core.registry import bucket_of
from uacregistrant.store import BATCH_SIZE
from uacregistrant.testing.registrar import UserPolicy


class SimulationTests(SynchronousTestCase):
    def assertClose(self, first: float, second: float, delta: float, msg: str = "") -> None:
        self.assertTrue(abs(first - second) <= delta, f"{first} is not within {delta} of {second} {msg}")

    def simulation(self, users: dict, **settings: object) -> Simulation:
        sim = Simulation(self.mktemp(), users, **settings)
        self.addCleanup(lambda: sim.service and sim.service.stopService())
        return sim

    def test_every_behaviour(self) -> None:
        """Each registrar behaviour ends in the state the rules give."""
        users = {
            "md5": UserPolicy(password="p1"),
            "sha": UserPolicy(password="p2", algorithms=("SHA-256",), challenge=407),
            "brief": UserPolicy(password="p3", min_expires=900),
            "wrong": UserPolicy(password="right"),
            "busy": UserPolicy(reply=503, retry_after=120),
            "forbidden": UserPolicy(reply=403),
            "silent": UserPolicy(silent=True),
            "stale": UserPolicy(password="p4", stale_once=True),
            "ha1": UserPolicy(password="p5"),
            "multi": UserPolicy(password="p6", extra_bindings=3, max_expires=300),
            "nocreds": UserPolicy(password="x"),
        }
        sim = self.simulation(users, hash_size=2, timer_interval=4, sip_t1=100)
        import hashlib

        ha1 = hashlib.md5(b"ha1:test.invalid:p5").hexdigest()
        for user, password in [("md5", "p1"), ("sha", "p2"), ("brief", "p3"), ("wrong", "nope"), ("busy", None),
                               ("forbidden", None), ("silent", None), ("stale", "p4"), ("ha1", "0x" + ha1),
                               ("multi", "p6"), ("nocreds", None)]:
            sim.add(user, password=password, expiry=600 if user == "brief" else 3600)
        sim.start()
        # Every first attempt has ended by then (the walk sends within 4 s,
        # Timer F is 64 x 0.1 s), and no retry has begun: the first back-off
        # is 15-30 s. (At 20 s, a retry drawn 15-20 s could be in flight.)
        sim.run(12)
        self.assertEqual(
            sim.states(),
            {
                "md5": "REGISTERED_STATE", "sha": "REGISTERED_STATE", "brief": "REGISTERED_STATE",
                "wrong": "WRONG_CREDENTIALS_STATE", "busy": "REGISTRAR_ERROR_STATE",
                "forbidden": "REGISTRAR_ERROR_STATE", "silent": "REGISTER_TIMEOUT_STATE",
                "stale": "REGISTERED_STATE", "ha1": "REGISTERED_STATE", "multi": "REGISTERED_STATE",
                "nocreds": "WRONG_CREDENTIALS_STATE",
            },
        )
        assert sim.service is not None
        by_user = {r.account.username: r for r in sim.service.registry}
        self.assertEqual(by_user["brief"].expires, 900)
        self.assertEqual(by_user["multi"].expires, 300)
        self.assertEqual(by_user["busy"].last_reply, (503, "Service Unavailable"))
        self.assertClose(by_user["busy"].next_at, by_user["busy"].last_register_sent + 120, delta=0.01)

    def test_buckets_visited_in_order(self) -> None:
        """With 4 buckets and timer_interval 4, bucket i is first sent at i seconds."""
        users = {f"u{i}": UserPolicy() for i in range(40)}
        sim = self.simulation(users, hash_size=2, timer_interval=4)
        for user in users:
            sim.add(user)
        sim.start()
        sim.run(4)
        first_sent = {}
        for received in sim.registrar.received:
            first_sent.setdefault(received.user, received.time)
        for user, when in first_sent.items():
            bucket = bucket_of(f"sip:{user}@test.invalid", 4)
            self.assertClose(when, bucket, delta=0.01, msg=user)
        self.assertEqual(len(first_sent), 40)

    def test_registrations_start_while_the_table_loads(self) -> None:
        """
        2,100 rows (three batches): the walk starts as the first batch
        lands, so REGISTERs go out before the load ends; records of later
        batches whose bucket the walk has visited go at once, the others at
        their bucket's visit (hash_size 1, timer_interval 100: 0 s and 50 s).
        """
        users = {f"u{i}": UserPolicy() for i in range(2100)}
        sim = self.simulation(users, hash_size=1, timer_interval=100, send_rate=100000)
        for user in users:
            sim.add(user)
        service = sim.start()
        sent_when_loaded: list[int] = []
        loaded = service.operations.loaded
        service.operations.loaded = lambda: (sent_when_loaded.append(service.counters.requests_sent), loaded())  # type: ignore[method-assign,func-returns-value]
        sim.run(1)
        self.assertEqual(len(sent_when_loaded), 1)
        self.assertGreater(sent_when_loaded[0], 0, "nothing was sent before the load ended")
        self.assertLess(sent_when_loaded[0], 2100)
        first_sent: dict[str, float] = {}
        for received in sim.registrar.received:
            first_sent.setdefault(received.user, received.time)
        bucket0 = {u for u in users if bucket_of(f"sip:{u}@test.invalid", 2) == 0}
        self.assertEqual(set(first_sent), bucket0)  # every batch's, none of bucket 1 yet
        self.assertLess(max(first_sent.values()), 1)
        sim.run(50)
        for received in sim.registrar.received:
            first_sent.setdefault(received.user, received.time)
        self.assertEqual(set(first_sent), set(users))
        self.assertEqual({round(t) for u, t in first_sent.items() if u not in bucket0}, {50})

    def test_no_lapse_over_hours(self) -> None:
        """Over three simulated hours no binding expires at the registrar, even grants shorter than a walk, or behind a 407."""
        users = {
            "long": UserPolicy(password="p"),
            "proxied": UserPolicy(password="p", challenge=407),
            "short": UserPolicy(password="p", max_expires=30),
            "tiny": UserPolicy(max_expires=7),
        }
        sim = self.simulation(users, hash_size=1, timer_interval=100)
        for user in users:
            sim.add(user, password="p", expiry=3600)
        sim.start()
        sim.run(120)
        self.assertEqual(set(sim.states().values()), {"REGISTERED_STATE"})
        for _ in range(3 * 3600):
            sim.run(1)
            now = sim.reactor.seconds()
            for (aor, _), binding in sim.registrar.bindings.items():
                self.assertGreater(binding.expires_at, now, aor)
        counts = {}
        for received in sim.registrar.received:
            counts[received.user] = counts.get(received.user, 0) + 1
        assert sim.service is not None
        self.assertEqual(sim.service.counters.lapsed_registrations, 0)
        # Refreshes at 90% of 3600 s carry credentials up front: one request each.
        for user, header in (("long", b"\r\nAuthorization: Digest "), ("proxied", b"\r\nProxy-Authorization: Digest ")):
            self.assertEqual(counts[user], 2 + 3, user)
            refreshes = [r for r in sim.registrar.received if r.user == user][2:]
            self.assertTrue(all(r.authorized and header in r.raw for r in refreshes), user)
            self.assertEqual([b"nc=0000000%d" % n in r.raw for n, r in zip((2, 3, 4), refreshes)], [True] * 3, user)
        self.assertLess(counts["tiny"], 3 * 3600 / 3.5 + 40)

    def test_pacing_spreads_a_big_bucket(self) -> None:
        """A 1000-record bucket goes out at the configured rate, not in one burst."""
        users = {f"u{i}": UserPolicy() for i in range(1000)}
        sim = self.simulation(users, hash_size=0, timer_interval=100, send_rate=200)
        for user in users:
            sim.add(user)
        sim.start()
        sim.run(1.0)
        self.assertLessEqual(len(sim.registrar.received), 200 + 5)
        self.assertGreaterEqual(len(sim.registrar.received), 190)
        sim.run(5)
        self.assertEqual(set(sim.states().values()), {"REGISTERED_STATE"})

    def test_retransmission(self) -> None:
        """Lost requests are retransmitted on Timer E and the record still registers."""
        sim = self.simulation({"lossy": UserPolicy(drop_first=2)}, hash_size=0, timer_interval=10, sip_t1=100)
        sim.add("lossy")
        service = sim.start()
        sim.run(0.12)
        self.assertEqual(service.counters.retransmissions, 1)
        sim.run(1)
        self.assertEqual(sim.states(), {"lossy": "REGISTERED_STATE"})
        self.assertEqual(service.counters.retransmissions, 2)
        times = [r.time for r in sim.registrar.received]
        self.assertClose(times[1] - times[0], 0.1, delta=0.02)
        self.assertClose(times[2] - times[1], 0.2, delta=0.02)

    def test_forged_and_garbage_datagrams(self) -> None:
        """Forged, unmatched and malformed datagrams are counted and dropped."""
        sim = self.simulation({"slow": UserPolicy(delay=1.0)}, hash_size=0, timer_interval=10)
        sim.add("slow")
        service = sim.start()
        sim.run(0.1)
        request = sim.registrar.received[0].raw
        branch = request.split(b"branch=")[1].split(b"\r\n")[0].decode()
        forged = (
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=" + branch + "\r\n"
            "CSeq: 1 REGISTER\r\nCall-ID: x\r\nTo: <sip:slow@test.invalid>;tag=1\r\nFrom: <sip:slow@test.invalid>;tag=2\r\n\r\n"
        ).encode()
        port = sim.reactor.network.ports[("127.0.0.1", 5060)]
        port.protocol.datagramReceived(forged, ("127.0.0.2", 5080))
        port.protocol.datagramReceived(forged.replace(b"CSeq: 1", b"CSeq: 9"), REGISTRAR)
        port.protocol.datagramReceived(forged.replace(branch.encode(), b"z9hG4bKnope"), REGISTRAR)
        port.protocol.datagramReceived(b"\x00\xffgarbage", REGISTRAR)
        port.protocol.datagramReceived(b"x" * 70000, REGISTRAR)
        options = forged.replace(b"SIP/2.0 200 OK", b"OPTIONS sip:x@h SIP/2.0").replace(b"1 REGISTER", b"1 OPTIONS")
        port.protocol.datagramReceived(options, REGISTRAR)
        counters = service.counters
        self.assertEqual(
            (counters.dropped_wrong_source, counters.dropped_cseq_mismatch, counters.dropped_no_transaction,
             counters.dropped_malformed, counters.dropped_oversized, counters.requests_answered),
            (1, 1, 1, 1, 1, 1),
        )
        self.assertEqual(sim.states(), {"slow": "REGISTERING_STATE"})
        sim.run(2)
        self.assertEqual(sim.states(), {"slow": "REGISTERED_STATE"})

    def test_bad_rows_skipped(self) -> None:
        """A bad row is logged with its id and why; the others load."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        sim = self.simulation({"ok": UserPolicy()}, hash_size=0, timer_interval=100)
        sim.add("ok")
        sim.add("userpart", registrar="sip:someone@127.0.0.1")
        sim.add("short", expiry=50)
        sim.add("socket", forced_socket="udp:127.0.0.9:5060")
        sim.add("garbage", aor="not a uri")
        sim.add("nullexp", expiry=None)
        service = sim.start()
        sim.run(0)
        self.assertEqual(sorted(r.account.username or "" for r in service.registry), ["nullexp", "ok"])
        self.assertEqual(service.registry.by_aor("sip:nullexp@test.invalid")[0].account.expiry, 3600)
        skipped = [e for e in events if "skipping row" in e.get("log_format", "")]
        self.assertEqual(sorted(e["row_id"] for e in skipped), [2, 3, 4, 5])
        self.assertTrue(all(e["hint"] for e in skipped))

    def test_hostile_rows_skipped_one_by_one(self) -> None:
        """
        Rows no check of the old loader survived (a Unicode digit in a port,
        REAL infinities, text that is not UTF-8, CR/LF, keys with <>) are
        each logged with their id and skipped; every good row registers.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        users = {f"good{i}": UserPolicy() for i in range(3)}
        sim = self.simulation(users, hash_size=0, timer_interval=100)
        sim.add("good0")
        sim.add("port", registrar="sip:127.0.0.1:\u00b2")
        sim.add("bport", binding_URI="sip:bport@127.0.0.1:\u0661")
        sim.add("inf", expiry=float("inf"))
        sim.add("infstate", state=9e999)
        sim.add("crlf", username="crlf\r\nX-Injected: 1")
        sim.add("params", binding_params=";a=b\r\nX-Injected: 1")
        sim.add("bracket", aor="<sip:bracket@test.invalid>")
        sim.add("good1")
        sim.db.execute(
            "INSERT INTO registrant (registrar, aor, binding_URI, username) VALUES (?, ?, ?, CAST(x'61ff62' AS TEXT))",
            (f"sip:{REGISTRAR[0]}:{REGISTRAR[1]}", "sip:utf@test.invalid", "sip:utf@127.0.0.1:5060"),
        )
        sim.db.commit()
        sim.add("good2")
        service = sim.start()
        sim.run(2)
        self.assertEqual(sim.states(), {f"good{i}": "REGISTERED_STATE" for i in range(3)})
        skipped = {e["row_id"]: e["reason"] for e in events if "skipping row" in e.get("log_format", "")}
        self.assertEqual(sorted(skipped), [2, 3, 4, 5, 6, 7, 8, 10])
        self.assertIn("UTF-8", skipped[10])
        self.assertIn("control character", skipped[6])
        self.assertEqual(len(service.registry), 3)

    def test_notify_during_a_full_pass(self) -> None:
        """
        A row deleted (its NOTIFY handled) while a reload reads the table in
        batches stays deleted: the pass's older snapshot does not bring it
        back.
        """
        users = {f"u{i}": UserPolicy() for i in range(2500)}
        sim = self.simulation(users, hash_size=0, timer_interval=100, send_rate=10000, max_in_flight=10000)
        sim.db.executemany(
            "INSERT INTO registrant (registrar, aor, binding_URI, expiry) VALUES (?, ?, ?, 3600)",
            [(f"sip:{REGISTRAR[0]}:{REGISTRAR[1]}", f"sip:{u}@test.invalid", f"sip:{u}@127.0.0.1:5060") for u in users],
        )
        sim.db.commit()
        sim.db.execute("PRAGMA journal_mode=WAL")  # a reader (the pass) does not block this test's writes
        service = sim.start()
        sim.run(5)
        self.assertEqual(len(sim.registrar.bindings), 2500)
        gone = ("sip:u2400@test.invalid", "sip:u2400@127.0.0.1:5060", f"sip:{REGISTRAR[0]}:{REGISTRAR[1]}")
        reload = service.reload()  # reads the first batch now, the rest on later turns
        sim.db.execute("DELETE FROM registrant WHERE aor = ?", (gone[0],))
        sim.db.commit()
        service.loader.row_changed(None, gone)  # the DELETE's NOTIFY, before the pass reads that row
        sim.run(2)
        counts = self.successResultOf(reload)
        self.assertEqual((counts["removed"], counts["unchanged"]), (0, 2499))
        self.assertIsNone(service.registry.get(gone))
        self.assertNotIn((gone[0], gone[1]), sim.registrar.bindings)

    def test_large_table_loads_in_slices(self) -> None:
        """Loading gives the reactor a turn every BATCH_SIZE rows (the walk starts with the first)."""
        users = {f"u{i}": UserPolicy() for i in range(4500)}
        sim = self.simulation(users, hash_size=0, timer_interval=100)
        sim.db.executemany(
            "INSERT INTO registrant (registrar, aor, binding_URI, expiry) VALUES (?, ?, ?, 3600)",
            [(f"sip:{REGISTRAR[0]}:{REGISTRAR[1]}", f"sip:{u}@test.invalid", f"sip:{u}@127.0.0.1:5060") for u in users],
        )
        sim.db.commit()
        service = sim.start()
        # The first slice loads at once; the rest waits for the next reactor turns.
        self.assertEqual(len(service.registry), BATCH_SIZE)
        self.assertTrue(any(call.getTime() == 0 for call in sim.reactor.getDelayedCalls()))
        sim.reactor.advance(0)
        self.assertEqual(len(service.registry), 4500)
        sim.run(0.1)
        self.assertGreater(len(sim.registrar.received), 0)

    def test_shutdown_unregisters_in_parallel(self) -> None:
        """Stopping un-registers every registered binding, paced, within the timeout."""
        users = {f"u{i}": UserPolicy(password="p") for i in range(30)}
        users["deaf"] = UserPolicy(password="p")
        sim = self.simulation(users, hash_size=0, timer_interval=100, send_rate=1000, shutdown_timeout=3)
        for user in users:
            sim.add(user, password="p")
        service = sim.start()
        sim.run(2)
        self.assertEqual(len(sim.registrar.bindings), 31)
        users["deaf"].silent = True
        stopped = service.stopService()
        sim.run(0.5)
        self.assertEqual(list(sim.registrar.bindings), [("sip:deaf@test.invalid", "sip:deaf@127.0.0.1:5060")])
        self.assertNoResult(stopped)
        sim.run(3)
        self.successResultOf(stopped)
        sim.service = None

    def test_shutdown_does_not_wait_for_failed_unregisters(self) -> None:
        """An un-REGISTER that fails outright (here a 500) counts as done: the shutdown does not wait out its timeout."""
        users = {"a": UserPolicy(password="p"), "b": UserPolicy(password="p")}
        sim = self.simulation(users, hash_size=0, timer_interval=100, shutdown_timeout=5)
        for user in users:
            sim.add(user, password="p")
        service = sim.start()
        sim.run(2)
        users["b"].reply = 500
        stopped = service.stopService()
        sim.run(0.5)
        self.successResultOf(stopped)
        self.assertEqual(list(sim.registrar.bindings), [("sip:b@test.invalid", "sip:b@127.0.0.1:5060")])
        sim.service = None

    def test_shutdown_can_leave_bindings(self) -> None:
        """--no-unregister-on-shutdown leaves the bindings in place."""
        sim = self.simulation({"a": UserPolicy()}, hash_size=0, timer_interval=100, unregister_on_shutdown=False)
        sim.add("a")
        service = sim.start()
        sim.run(1)
        self.successResultOf(service.stopService())
        sim.run(1)
        self.assertEqual(len(sim.registrar.bindings), 1)
        sim.service = None

    def test_db_poll(self) -> None:
        """--db-poll applies inserts, updates and deletes without a command, keeping Call-IDs."""
        users = {"a": UserPolicy(), "b": UserPolicy(), "c": UserPolicy()}
        sim = self.simulation(users, hash_size=0, timer_interval=100, db_poll=5)
        sim.add("a")
        sim.add("b")
        service = sim.start()
        sim.run(1)
        call_id = service.registry.by_aor("sip:a@test.invalid")[0].call_id
        sim.add("c")
        sim.db.execute("UPDATE registrant SET expiry = 1800 WHERE username = 'a'")
        sim.db.execute("DELETE FROM registrant WHERE username = 'b'")
        sim.db.commit()
        sim.run(5)
        self.assertEqual(sim.states(), {"a": "REGISTERED_STATE", "c": "REGISTERED_STATE"})
        a = service.registry.by_aor("sip:a@test.invalid")[0]
        self.assertEqual((a.call_id, a.expires), (call_id, 1800))
        self.assertNotIn("sip:b@test.invalid", [k[0] for k in sim.registrar.bindings])

    def test_in_flight_window(self) -> None:
        """No more than --max-in-flight transactions at once: a slow registrar slows the sending."""
        users = {f"u{i}": UserPolicy(delay=0.3) for i in range(100)}
        sim = self.simulation(users, hash_size=0, timer_interval=100, send_rate=1000, max_in_flight=10)
        for user in users:
            sim.add(user)
        service = sim.start()
        peak = 0
        for _ in range(100):
            sim.run(0.1)
            peak = max(peak, len(service.transactions))
            if set(sim.states().values()) == {"REGISTERED_STATE"}:
                break
        self.assertEqual(peak, 10)
        self.assertEqual(set(sim.states().values()), {"REGISTERED_STATE"})
        self.assertEqual(service.counters.retransmissions, 0)

    def test_lapse_is_counted(self) -> None:
        """A binding renewed only after it expired counts as a lapse in reg_stats."""
        users = {"flaky": UserPolicy(max_expires=10)}
        sim = self.simulation(users, hash_size=0, timer_interval=5, retry_interval=5, retry_max_interval=5)
        sim.add("flaky", expiry=10)
        service = sim.start()
        sim.run(2)
        self.assertEqual(sim.states(), {"flaky": "REGISTERED_STATE"})
        users["flaky"].silent = True
        sim.run(30)
        self.assertEqual(service.counters.lapsed_registrations, 0)
        users["flaky"].silent = False
        sim.run(15)
        self.assertEqual(sim.states(), {"flaky": "REGISTERED_STATE"})
        self.assertEqual(service.counters.lapsed_registrations, 1)

    def test_outage_recovery_brings_retries_forward(self) -> None:
        """
        Refreshes time out during a registrar outage and back off; the first
        answer after it returns releases every record waiting on it, paced,
        instead of each sitting out its back-off (30-60 s here).
        """
        users = {f"u{i}": UserPolicy() for i in range(400)}
        sim = self.simulation(users, hash_size=0, timer_interval=60, send_rate=100, retry_interval=60, retry_max_interval=600)
        for user in users:
            sim.add(user, expiry=120)
        service = sim.start()
        sim.run(10)
        self.assertEqual(set(sim.states().values()), {"REGISTERED_STATE"})
        down = {"value": True}
        sim.reactor.network.drop = lambda data, src, dst: down["value"] and dst == REGISTRAR
        sim.run(130 - sim.reactor.seconds())  # refreshes start at 88-92 s and time out 32 s later
        self.assertEqual(set(sim.states().values()), {"REGISTER_TIMEOUT_STATE"})
        down["value"] = False
        sim.run(10)  # back at 130 s; the first back-off ends after 150 s
        self.assertEqual(set(sim.states().values()), {"REGISTER_TIMEOUT_STATE"})
        first_retry = min(r.next_at or 1e9 for r in service.registry)
        sim.run(first_retry + 8 - sim.reactor.seconds())  # 400 records at 100/s: 4 s of pacing
        self.assertEqual(set(sim.states().values()), {"REGISTERED_STATE"})
        self.assertGreater(service.counters.early_retries, 300)
        after = [r.time for r in sim.registrar.received if r.time >= first_retry]
        # One request per record (the kept credentials are accepted), paced:
        # no second holds more than the rate plus the token bucket's burst.
        self.assertEqual(len(after), 400)
        busiest = max(len([t for t in after if start <= t < start + 1]) for start in after)
        self.assertLessEqual(busiest, 100 + 2)


class TwoServicesTests(SynchronousTestCase):
    def test_two_services_share_no_tables(self) -> None:
        """
        Two daemons in one process keep their own interning tables: equal
        values are one object within a service, separate objects across
        services (a process-wide table would make them the same object).
        """
        services = []
        for _ in range(2):
            users = {"a": UserPolicy(password="p"), "b": UserPolicy(password="p")}
            sim = Simulation(self.mktemp(), users, hash_size=0, timer_interval=1)
            for user in users:
                sim.add(user, password="p")
            service = sim.start()
            self.addCleanup(service.stopService)
            sim.run(5)
            self.assertEqual(set(sim.states().values()), {"REGISTERED_STATE"})
            services.append(service)
        first, second = ([r for r in service.registry] for service in services)
        self.assertIsNot(services[0].shared, services[1].shared)
        for service, records in zip(services, (first, second)):
            for registrant in records:
                self.assertIs(registrant.policy.shared, service.shared)
        # Within a service, equal status lines and challenge text are one object ...
        self.assertIs(first[0].last_reply, first[1].last_reply)
        # ... and across services they are not.
        self.assertEqual(first[0].last_reply, second[0].last_reply)
        self.assertIsNot(first[0].last_reply, second[0].last_reply)
