"""
Issue 12's proof: three daemons on loopback sharing one registrant table
in a real PostgreSQL as a cluster, against the packaged test registrar
(which logs every REGISTER's Call-ID, CSeq, Expires and source), and two
against Kamailio.

One chain of scenarios on one cluster (each step starts from the state
the previous one left):

1. settle: every record on exactly one node, slots within one of equal,
   each AOR refreshed from one source only (its holder's);
2. kill -9 of one node: its records are registered by the others within
   2 x lease, same Call-ID, CSeq above every one it had;
3. SIGTERM of another: nothing un-registered, the last node holds and
   registers everything;
4. both restarted: they rebalance without un-registering anything;
5. PostgreSQL restarted: nothing lost, still disjoint, every node alive;
6. one node cut off from PostgreSQL (a forwarder that stops relaying): it
   fences itself within 2/3 lease and sends nothing more, the others take
   its slots within 2 x lease; healed, it rejoins without duelling;
7. the whole cluster stopped node by node: the last one un-registers.

ClusterStopTests: the last node stopped while the REGISTERs of the
records it has just taken over are unanswered: it un-registers them too.
ClusterKamailioTests: two nodes against Kamailio, a kill -9 take-over
seen in Kamailio's location table.

Throughout: one Call-ID per AOR in the registrar's whole log, and every
REGISTER of a Call-ID above every earlier CSeq of it (the test registrar,
like Kamailio, answers anything else with 400 Invalid CSeq number).

Timing: lease-bounded claims (2 x lease, 2/3 lease) are asserted with
L{MARGIN} seconds on top for polling and the paced sends; everything else
waits with L{wait_for}.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Iterable

from uacregistrant.control.ctl import request
from uacregistrant.store import schema_sql
from uacregistrant.store.coordinator import SLOTS

from .helpers import PATIENCE, TWISTD, ProcessTestCase, free_udp_port, records, wait_for
from .kamailio import KamailioRegistrar
from .postgres import PostgresServer
from .proxy import Forwarder

CLUSTER = "trunks"
#: --cluster-lease: short, to keep the tests quick (3 is the smallest allowed).
LEASE = 3.0
#: Seconds allowed on top of a lease-derived bound (polling, paced sends, a ctl round trip).
MARGIN = 1.0
#: Accounts and their expiries: a registration of 30-40 s is refreshed every 15-20 s
#: (Timer F of 32 s caps the lead at half the expiry).
USERS = {f"u{i:02d}": {"password": f"pw-{i}"} for i in range(45)}
EXPIRY = {user: 30 + 5 * (i % 3) for i, user in enumerate(USERS)}
#: The longest time between two refreshes of one record.
REFRESH_PERIOD = max(EXPIRY.values()) / 2

REGISTER = re.compile(r"REGISTER user=(\S+) call_id=(\S+) cseq=(\d+) expires=(\S+) authorized=(\S+) source=[\d.]+:(\d+)")


@dataclass(frozen=True)
class Seen:
    """One REGISTER as the test registrar logged it."""

    user: str
    call_id: str
    cseq: int
    expires: str
    authorized: bool
    port: int


@dataclass
class Node:
    name: str
    port: int
    control: str
    db_url: str
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def ctl_json(control: str, command: str) -> Any:
    status, body = request(control, f"{command} json", timeout=PATIENCE / 2)
    if status != "200 OK":
        raise ValueError(f"{command}: {status} {body}")  # (wait_for tries again)
    return json.loads(body[0])


def stats(node: Node) -> dict[str, Any]:
    """reg_stats' transport section (the cluster's part)."""
    return dict(ctl_json(node.control, "reg_stats")["transport"])


def members(node: Node) -> dict[str, dict[str, Any]]:
    """reg_cluster, by node name."""
    return {m["name"]: m for m in ctl_json(node.control, "reg_cluster")["Nodes"]}


def balanced(counts: Iterable[int]) -> bool:
    counts = list(counts)
    return sum(counts) == SLOTS and max(counts) - min(counts) <= 1


class ClusterTestBase(ProcessTestCase):
    timeout = 300

    def setUp(self) -> None:
        self.server = PostgresServer()
        self.addCleanup(self.server.destroy)
        self.server.start()
        super().setUp()
        self.nodes: dict[str, Node] = {}
        # Run before Processes.stop (cleanups run last first): the nodes go
        # before their registrar, without waiting out un-REGISTERs.
        self.addCleanup(self.kill_nodes)

    def kill_nodes(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                assert node.process is not None
                node.process.kill()
                node.process.wait()

    def table(self, registrar: str, domain: str, passwords: dict[str, str], expiry: dict[str, int]) -> None:
        """The registrant table, one row per user, all contacts at one binding address."""
        self.server.execute(schema_sql("postgres"))
        binding = free_udp_port()
        for user, password in passwords.items():
            self.server.execute(
                "INSERT INTO registrant (aor, registrar, binding_URI, username, password, expiry) VALUES (%s, %s, %s, %s, %s, %s)",
                (f"sip:{user}@{domain}", registrar, f"sip:{user}@127.0.0.1:{binding}", user, password, expiry[user]),
            )

    def node(self, name: str, db_url: str | None = None) -> Node:
        """A node, not started (L{start})."""
        node = Node(name, free_udp_port(), f"unix:{self.processes.sockets / name}.ctl", db_url or self.server.url)
        self.nodes[name] = node
        return node

    def start(self, node: Node) -> None:
        """Start (or start again) C{node}: same name, listen port and control socket."""
        assert not node.alive
        node.runs += 1
        node.process = self.processes.spawn(
            [*TWISTD, "-n", "--pidfile=", "--logfile=-", "uacregistrant",
             "--control", node.control, "--db-url", node.db_url, "--cluster", CLUSTER, "--node-name", node.name,
             "--cluster-lease", str(LEASE), "--listen", f"udp:127.0.0.1:{node.port}",
             "--hash-size", "0", "--timer-interval", "10"],
            f"{node.name}-{node.runs}",
        )

    def kill(self, node: Node) -> float:
        """kill -9; returns when it was sent (monotonic)."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        at = time.monotonic()
        node.process.wait()
        return at

    def terminate(self, node: Node, signalled: bool = False) -> None:
        """SIGTERM (unless C{signalled} already), and wait for the exit (twistd exits by the signal it was stopped with)."""
        assert node.process is not None
        if not signalled:
            node.process.terminate()
        self.assertIn(node.process.wait(PATIENCE), (0, -signal.SIGTERM), self.node_log(node))
        self.assertIn("Server Shut Down.", self.node_log(node))

    def node_log(self, node: Node) -> str:
        return self.processes.log(f"{node.name}-{node.runs}")

    def by_port(self) -> dict[int, str]:
        return {n.port: n.name for n in self.nodes.values()}

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.alive]

    def held(self, nodes: Iterable[Node] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
        """reg_list of each node: node name -> user -> record."""
        return {n.name: records(n.control) for n in (self.live() if nodes is None else nodes)}

    def settled(self, users: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]] | None:
        """
        The live nodes' records if the cluster has settled: every live node
        alive in reg_cluster (and no other), not fenced, slots within one of
        equal, every record held by exactly one node and registered there.
        """
        live = self.live()
        slots = {}
        for node in live:
            transport = stats(node)
            if transport["fenced"] != "no":
                return None
            slots[node.name] = transport["slots_held"]
        if not balanced(slots.values()):
            return None
        cluster = members(live[0])
        alive = {name for name, m in cluster.items() if m["alive"] == "yes"}
        if alive != {n.name for n in live}:
            return None
        held = self.held(live)
        every = [user for mine in held.values() for user in mine]
        if sorted(every) != sorted(users):
            return None
        if any(r["state"] != "REGISTERED_STATE" for mine in held.values() for r in mine.values()):
            return None
        for node in live:
            # reg_stats, reg_list and reg_cluster (as of the last heartbeat) agree.
            if stats(node)["records_held"] != len(held[node.name]):
                return None
            row = cluster[node.name]
            if (row["slots"], row["records"]) != (slots[node.name], len(held[node.name])):
                return None
            if row["listen"] != f"udp:127.0.0.1:{node.port}" or row["last_heartbeat_s_ago"] > LEASE:
                return None
        return held

    def settle(self, users: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """Wait until L{settled}; meanwhile, no record may be listed by two nodes that are not fenced."""
        users = list(users)

        def check() -> dict[str, dict[str, dict[str, Any]]] | None:
            self.check_overlap()
            return self.settled(users)

        return wait_for(check)  # type: ignore[no-any-return]

    def check_overlap(self) -> None:
        """Fail if two live nodes that are not fenced list one record (reg_list) at the same time."""
        unfenced = [n for n in self.live() if stats(n)["fenced"] == "no"]
        listed: dict[str, str] = {}
        for name, mine in self.held(unfenced).items():
            for user in mine:
                self.assertNotIn(user, listed, f"{user} held by {listed.get(user)} and {name}, neither fenced")
                listed[user] = name

    def assert_disjoint(self, held: dict[str, dict[str, dict[str, Any]]], users: Iterable[str]) -> None:
        every = [user for mine in held.values() for user in mine]
        self.assertEqual(len(every), len(set(every)), f"a record listed by two nodes: {held}")
        self.assertEqual(set(every), set(users))


class ClusterTests(ClusterTestBase):
    """Three nodes and the packaged test registrar."""

    def seen(self) -> list[Seen]:
        """Every REGISTER the registrar received, in order."""
        return [Seen(m[1], m[2], int(m[3]), m[4], m[5] == "True", int(m[6]))
                for m in REGISTER.finditer(self.processes.log("registrar"))]

    def holder_of(self, held: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str]:
        return {user: name for name, mine in held.items() for user in mine}

    def assert_continuity(self) -> None:
        """
        The registrar's whole log: one Call-ID per AOR, each REGISTER above
        every CSeq sent before on it (else the registrar answers 400; a
        retransmission, same CSeq from the same source, excepted), and no
        un-REGISTER.
        """
        call_ids: dict[str, set[str]] = {}
        top: dict[str, Seen] = {}
        regressions = []
        for seen in self.seen():
            call_ids.setdefault(seen.user, set()).add(seen.call_id)
            before = top.get(seen.call_id)
            if before is not None and seen.cseq <= before.cseq and not (seen.cseq == before.cseq and seen.port == before.port):
                regressions.append((before, seen))
            if before is None or seen.cseq > before.cseq:
                top[seen.call_id] = seen
        self.assertEqual({u: len(c) for u, c in call_ids.items() if len(c) != 1}, {}, "an AOR registered under two Call-IDs")
        self.assertEqual(regressions, [], "a CSeq not above an earlier one on the same Call-ID (400 Invalid CSeq)")
        self.assertEqual([s for s in self.seen() if s.expires == "0"], [], "an un-REGISTER")

    def refreshed_from_holders(self, since: int, held: dict[str, dict[str, dict[str, Any]]], started: float) -> None:
        """
        Every REGISTER after the C{since}-th comes from the record's holder
        (its listen port), over a whole refresh period during which every
        record was refreshed at least once.
        """
        holder = self.holder_of(held)
        ports = {n.name: n.port for n in self.nodes.values()}

        def refreshed() -> bool:
            users = {s.user for s in self.seen()[since:] if s.authorized}
            return users == set(USERS) and time.monotonic() - started > REFRESH_PERIOD + 1

        wait_for(refreshed, timeout=REFRESH_PERIOD + PATIENCE)
        names = self.by_port()
        sources: dict[str, set[str]] = {}
        for seen in self.seen()[since:]:
            sources.setdefault(seen.user, set()).add(names.get(seen.port, str(seen.port)))
        self.assertEqual({u: s for u, s in sources.items() if s != {holder[u]}}, {},
                         f"REGISTERs from a node other than the holder (holders by port: {ports})")

    def test_cluster(self) -> None:
        port = self.processes.registrar(USERS)
        self.table(f"sip:127.0.0.1:{port}", "test.invalid", {u: p["password"] for u, p in USERS.items()}, EXPIRY)
        # Node a reaches PostgreSQL through a forwarder the test can cut (6).
        host, pg_port = "127.0.0.1", self.server.port
        forwarder = Forwarder((host, pg_port))
        self.addCleanup(forwarder.close)
        a = self.node("a", self.server.url.replace(f":{pg_port}/", f":{forwarder.port}/"))
        b = self.node("b")
        c = self.node("c")
        try:
            self._chain(a, b, c, forwarder)
            # Losing PostgreSQL (stopped, cut off) is logged as warnings, never as an error with a traceback.
            for node in self.nodes.values():
                for run in range(1, node.runs + 1):
                    log = self.processes.log(f"{node.name}-{run}")
                    self.assertEqual([line for line in log.splitlines() if "Traceback" in line or "Unhandled" in line], [],
                                     f"{node.name} run {run}")
        finally:
            for node in self.nodes.values():
                print(f"--- {node.name} (run {node.runs}) ---\n{self.node_log(node)[-6000:]}")

    def _chain(self, a: Node, b: Node, c: Node, forwarder: Forwarder) -> None:
        names = self.by_port()

        # 1. Settle: disjoint, balanced, each AOR from its holder only.
        for node in (a, b, c):
            self.start(node)
        held = self.settle(USERS)
        self.assert_disjoint(held, USERS)
        self.assertEqual(sorted(members(a)), ["a", "b", "c"])
        self.assertTrue(all(mine for mine in held.values()), held)
        call_ids = {u: r["call_id"] for mine in held.values() for u, r in mine.items()}
        self.refreshed_from_holders(len(self.seen()), held, time.monotonic())
        again = self.settled(USERS)
        assert again is not None
        self.assertEqual(self.holder_of(again), self.holder_of(held), "records moved without a reason")
        self.assert_continuity()

        # 2. kill -9 of a: the others take its records over within 2 x lease.
        victims = set(held["a"])
        before = self.seen()
        top = {u: max(s.cseq for s in before if s.user == u) for u in victims}
        killed = self.kill(a)

        def taken_over() -> dict[str, Seen] | None:
            first: dict[str, Seen] = {}
            for seen in self.seen()[len(before):]:
                if seen.user in victims and seen.user not in first:
                    first[seen.user] = seen
            return first if set(first) == victims else None

        first = wait_for(taken_over, interval=0.05)
        took = time.monotonic() - killed
        print(f"kill -9: {len(victims)} records registered by the others {took:.2f}s after (lease {LEASE}s)")
        self.assertLessEqual(took, 2 * LEASE + MARGIN)
        for user, seen in first.items():
            self.assertIn(names[seen.port], ("b", "c"))
            self.assertEqual(seen.call_id, call_ids[user])
            self.assertGreater(seen.cseq, top[user])
        held = self.settle(USERS)
        self.assertEqual(set(held), {"b", "c"})
        self.assertEqual(members(b)["a"]["alive"], "no")
        self.assert_continuity()

        # 3. SIGTERM of b while c lives: c holds and registers everything, nothing un-registered.
        handed = set(held["b"])
        since = len(self.seen())
        stopping = time.monotonic()
        self.terminate(b)
        wait_for(lambda: {s.user for s in self.seen()[since:] if s.port == c.port and s.authorized} >= handed, interval=0.05)
        took = time.monotonic() - stopping
        print(f"SIGTERM: {len(handed)} records registered by c {took:.2f}s after")
        self.assertLessEqual(took, 2 * LEASE + MARGIN)
        held = self.settle(USERS)
        self.assertEqual(stats(c)["slots_held"], SLOTS)
        self.assertEqual(set(held["c"]), set(USERS))
        self.assertEqual({s.user for s in self.seen()[since:] if s.port != c.port}, set())
        self.assert_continuity()
        self.assertIn("take the records over (nothing un-registered)", self.node_log(b))

        # 4. a and b again: slots rebalance, nothing un-registered, Call-IDs kept.
        self.start(a)
        self.start(b)
        held = self.settle(USERS)
        self.assert_disjoint(held, USERS)
        self.assertEqual({u: r["call_id"] for mine in held.values() for u, r in mine.items()}, call_ids)
        self.assert_continuity()

        # 5. PostgreSQL stopped and started again: nothing lost, still disjoint.
        self.server.stop()
        stopped = time.monotonic()
        wait_for(lambda: all(stats(n)["fenced"] == "yes" for n in (a, b, c)))
        print(f"PostgreSQL stopped: every node fenced after {time.monotonic() - stopped:.2f}s")
        self.server.start()
        held = self.settle(USERS)
        self.assert_disjoint(held, USERS)
        self.assertEqual({u: r["call_id"] for mine in held.values() for u, r in mine.items()}, call_ids)
        for node in (a, b, c):
            self.assertEqual(members(node)[node.name]["alive"], "yes")
        # Registrations carry on: every record refreshed again, each from its holder only.
        self.refreshed_from_holders(len(self.seen()), held, time.monotonic())
        self.assert_continuity()

        # 6. a cut off from PostgreSQL: fenced within 2/3 lease, then silent;
        #    the others take its slots within 2 x lease; healed, it rejoins.
        victims = set(held["a"])
        at_cut = len(self.seen())
        forwarder.cut()
        cut = time.monotonic()
        wait_for(lambda: stats(a)["fenced"] == "yes", interval=0.05)
        fenced = time.monotonic() - cut
        print(f"cut off: a fenced {fenced:.2f}s after (lease {LEASE}s)")
        self.assertLessEqual(fenced, 2 * LEASE / 3 + MARGIN / 2)
        time.sleep(0.3)  # a REGISTER in flight at the fence reaches the registrar
        quiet = len(self.seen())
        # Ask a to send for every record it had: fenced, it must not.
        for user in victims:
            self.assertEqual(request(a.control, f"reg_force_register sip:{user}@test.invalid")[0], "200 OK")

        def taken_over_from_a() -> bool:
            users = {s.user for s in self.seen()[at_cut:] if s.port != a.port and s.authorized}
            return users >= victims

        wait_for(taken_over_from_a, interval=0.05)
        took = time.monotonic() - cut
        print(f"cut off: {len(victims)} records registered by the others {took:.2f}s after the cut")
        self.assertLessEqual(took, 2 * LEASE + MARGIN)
        wait_for(lambda: stats(b)["slots_held"] + stats(c)["slots_held"] == SLOTS)
        self.assertEqual(stats(a)["fenced"], "yes")
        # The force-registered records were due at a for a whole lease: nothing went out.
        time.sleep(max(0.0, cut + 2 * LEASE - time.monotonic()))
        self.assertEqual([s for s in self.seen()[quiet:] if s.port == a.port], [], "a sent while fenced")
        forwarder.heal()
        healed = len(self.seen())
        held = self.settle(USERS)
        self.assertTrue(held["a"], held)
        self.assertEqual([s for s in self.seen()[quiet:healed] if s.port == a.port], [], "a sent while fenced")
        self.refreshed_from_holders(len(self.seen()), held, time.monotonic())
        self.assertEqual({u: r["call_id"] for mine in held.values() for u, r in mine.items()}, call_ids)
        self.assert_continuity()

        # 7. The whole cluster stopped in one instant (a SIGTERM to each node):
        #    they decide in turn; the last to decide takes the others' slots
        #    and un-registers everything.  (One node after the other: the
        #    unit tests and ClusterStopTests.)
        since = len(self.seen())
        for node in (a, b, c):
            assert node.process is not None
            node.process.terminate()
        for node in (a, b, c):
            self.terminate(node, signalled=True)
        gone = [s for s in self.seen()[since:] if s.expires == "0"]
        self.assertEqual({s.user for s in gone}, set(USERS))
        self.assertEqual(len({s.port for s in gone}), 1, "un-registered by more than one node")
        self.assertEqual({s.call_id for s in gone}, set(call_ids.values()))
        last = names[gone[0].port]
        for node in (a, b, c):
            told = "every binding un-registered" if node.name == last else "take the records over (nothing un-registered)"
            self.assertIn(told, self.node_log(node))


class ClusterStopTests(ClusterTestBase):
    """Stopping the whole cluster node by node, the last node stopped at once."""

    def test_last_node_stopped_during_take_over(self) -> None:
        """
        The last node is stopped as soon as it holds every slot, while the
        REGISTERs of the records it just took over wait for their answers
        (the registrar answers after a second): it still un-registers
        every record, the handed-over ones included.
        """
        users = {f"u{i:02d}": {"password": f"pw-{i}"} for i in range(20)}
        port = self.processes.registrar(users, delay=1.0)
        self.table(f"sip:127.0.0.1:{port}", "test.invalid", {u: p["password"] for u, p in users.items()}, {u: 60 for u in users})
        a, b = self.node("a"), self.node("b")
        try:
            self.start(a)
            self.start(b)
            held = self.settle(users)
            self.assertTrue(held["a"] and held["b"], held)
            self.terminate(a)
            wait_for(lambda: stats(b)["slots_held"] == SLOTS, interval=0.05)
            self.terminate(b)
            gone = {m[1]: int(m[6]) for m in REGISTER.finditer(self.processes.log("registrar")) if m[4] == "0"}
            self.assertEqual(set(gone), set(users), f"not un-registered (a held {sorted(held['a'])})")
            self.assertEqual(set(gone.values()), {b.port})
        finally:
            for node in self.nodes.values():
                print(f"--- {node.name} (run {node.runs}) ---\n{self.node_log(node)[-3000:]}")


KAM_DOMAIN = "kam.test"
KAM_USERS = {f"k{i:02d}": f"kpw-{i}" for i in range(20)}


class ClusterKamailioTests(ClusterTestBase):
    """Two nodes against Kamailio: a take-over continues each contact's Call-ID with a higher CSeq."""

    def test_take_over_at_kamailio(self) -> None:
        kamailio = KamailioRegistrar({(u, KAM_DOMAIN): p for u, p in KAM_USERS.items()}, min_expires=10)
        self.addCleanup(kamailio.destroy)
        kamailio.start()
        self.table(kamailio.uri, KAM_DOMAIN, KAM_USERS, {u: 60 for u in KAM_USERS})
        a, b = self.node("a"), self.node("b")
        try:
            self.start(a)
            self.start(b)
            held = self.settle(KAM_USERS)
            self.assert_disjoint(held, KAM_USERS)
            self.assertTrue(held["a"] and held["b"], held)
            contacts = {u: kamailio.bindings(f"sip:{u}@{KAM_DOMAIN}") for u in KAM_USERS}
            for user, found in contacts.items():
                self.assertEqual(len(found), 1, (user, found))
                holder = "a" if user in held["a"] else "b"
                self.assertEqual(found[0]["Call-ID"], held[holder][user]["call_id"])
            requests_before = len(kamailio.requests())

            victims = set(held["a"])
            killed = self.kill(a)
            wanted = {f"sip:{u}@{KAM_DOMAIN}" for u in victims}
            wait_for(lambda: {to for to, _, _ in kamailio.requests()[requests_before:]} >= wanted, interval=0.05)
            took = time.monotonic() - killed
            print(f"kill -9: {len(victims)} AORs sent to Kamailio by b {took:.2f}s after (lease {LEASE}s)")
            self.assertLessEqual(took, 2 * LEASE + MARGIN)

            def continued() -> dict[str, dict[str, Any]] | None:
                now = {u: kamailio.bindings(f"sip:{u}@{KAM_DOMAIN}") for u in victims}
                if any(len(found) != 1 or found[0]["CSeq"] == contacts[u][0]["CSeq"] for u, found in now.items()):
                    return None
                return {u: found[0] for u, found in now.items()}

            after = wait_for(continued)
            for user, contact in after.items():
                (old,) = contacts[user]
                self.assertEqual(contact["Call-ID"], old["Call-ID"], user)
                self.assertGreater(int(contact["CSeq"]), int(old["CSeq"]), user)
            # The refreshes came from b (Kamailio's own log of sources), and b has them registered.
            sources = {to: source for to, source, _ in kamailio.requests()[requests_before:]}
            for user in victims:
                self.assertEqual(sources.get(f"sip:{user}@{KAM_DOMAIN}"), f"127.0.0.1:{b.port}", user)
            held = self.settle(KAM_USERS)
            self.assertEqual(set(held["b"]), set(KAM_USERS))
            for user in victims:
                self.assertEqual(held["b"][user]["last_reply"], "200 OK")
            # The records b had before were not touched: same Call-ID at Kamailio.
            for user in set(KAM_USERS) - victims:
                (contact,) = kamailio.bindings(f"sip:{user}@{KAM_DOMAIN}")
                self.assertEqual(contact["Call-ID"], contacts[user][0]["Call-ID"])
        finally:
            for node in self.nodes.values():
                print(f"--- {node.name} (run {node.runs}) ---\n{self.node_log(node)[-4000:]}")
            print(kamailio.log()[-3000:])
