"""
The RFC 3261 §17.1.2 client non-INVITE transaction machine, on plain
numbers for time: no reactor, no clock.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import uacregistrant
from uacregistrant.core.counters import SipCounters
from uacregistrant.net.transaction import Deliver, NonInviteClientTransactions, TimedOut, Transmit
from uacregistrant.sip.message import Response, parse_message

DEST = ("127.0.0.1", 5060)


def reply(status: int, branch: str = "z9hG4bKb1", cseq: str = "1 REGISTER") -> Response:
    message = parse_message(
        f"SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP h;branch={branch}\r\nCSeq: {cseq}\r\n"
        "To: <sip:a@h>;tag=t\r\nFrom: <sip:a@h>;tag=f\r\nCall-ID: c\r\n\r\n".encode()
    )
    assert isinstance(message, Response)
    return message


class MachineTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.counters = SipCounters()
        self.table: NonInviteClientTransactions[str] = NonInviteClientTransactions(self.counters, t1=0.5, t2=4.0, t4=5.0)

    def start(self, now: float = 0.0, key: str = "z9hG4bKb1", user: str = "u1", reliable: bool = False, dest: tuple[str, int] = DEST) -> Transmit[str]:
        return self.table.start(now, key, dest, b"REQ", 1, user, reliable)

    def run_until(self, end: float) -> list[tuple[float, Transmit[str] | TimedOut[str]]]:
        """Call on_timer at each deadline up to C{end}, as an edge would: the actions, with their times."""
        happened: list[tuple[float, Transmit[str] | TimedOut[str]]] = []
        while (deadline := self.table.next_deadline()) is not None and deadline <= end:
            happened.extend((deadline, action) for action in self.table.on_timer(deadline))
        return happened

    def sent_at(self, happened: list[tuple[float, Transmit[str] | TimedOut[str]]]) -> list[float]:
        return [t for t, action in happened if isinstance(action, Transmit)]

    def timed_out_at(self, happened: list[tuple[float, Transmit[str] | TimedOut[str]]]) -> list[float]:
        return [t for t, action in happened if isinstance(action, TimedOut)]


class RetransmissionTests(MachineTestCase):
    def test_start_sends_the_request(self) -> None:
        """Starting answers the first send; the first retransmission is due T1 later."""
        self.assertEqual(self.start(now=10.0), Transmit(b"REQ", DEST, "u1", False))
        self.assertEqual(len(self.table), 1)
        self.assertEqual(self.table.next_deadline(), 10.5)
        self.assertEqual(self.table.on_timer(10.49), [])

    def test_timer_e_doubles_up_to_t2_then_timer_f(self) -> None:
        """Retransmits at 0.5, 1.5, 3.5, 7.5, then every 4 s; Timer F (64*T1) ends it at 32 s."""
        self.start()
        happened = self.run_until(100)
        self.assertEqual(self.sent_at(happened), [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.assertTrue(all(action == Transmit(b"REQ", DEST, "u1", True) for _, action in happened[:-1]))
        self.assertEqual(happened[-1], (32.0, TimedOut("u1")))
        self.assertEqual((self.counters.timeouts, len(self.table), self.table.next_deadline()), (1, 0, None))

    def test_late_timer_retransmits_once(self) -> None:
        """Called late, on_timer retransmits once and counts the next interval from then (no burst)."""
        self.start()
        self.assertEqual(self.table.on_timer(5.0), [Transmit(b"REQ", DEST, "u1", True)])
        self.assertEqual(self.table.next_deadline(), 6.0)

    def test_provisional_switches_to_t2(self) -> None:
        """After a 1xx, retransmissions come every T2, and Timer F still ends the transaction at 64*T1."""
        self.start()
        self.assertIsNone(self.table.receive(reply(100), DEST, 0.2))
        self.assertEqual(self.counters.responses_accepted, 1)
        happened = self.run_until(100)
        self.assertEqual(self.sent_at(happened), [4.2, 8.2, 12.2, 16.2, 20.2, 24.2, 28.2])
        self.assertEqual(self.timed_out_at(happened), [32.0])

    def test_transactions_interleave_in_deadline_order(self) -> None:
        """Many transactions started at random times: every action comes at or after its deadline, in time order."""
        rng = random.Random(7)
        starts = sorted(rng.uniform(0, 10) for _ in range(500))
        for i, now in enumerate(starts):
            self.start(now=now, key=f"k{i}", user=f"u{i}")
        happened = self.run_until(1000)
        times = [t for t, _ in happened]
        self.assertEqual(times, sorted(times))
        self.assertEqual(len(self.timed_out_at(happened)), 500)
        self.assertEqual(len(self.sent_at(happened)), 500 * 10)
        first_retransmission = {action.user: t for t, action in reversed(happened)}
        self.assertEqual([first_retransmission[f"u{i}"] for i in range(500)], [now + 0.5 for now in starts])


class ResponseTests(MachineTestCase):
    def test_final_response_completes(self) -> None:
        """A 2xx-6xx is delivered with the transaction's user; nothing is retransmitted or timed out after it."""
        self.start()
        response = reply(401)
        self.assertEqual(self.table.receive(response, DEST, 0.3), Deliver("u1", response))
        self.assertEqual((self.counters.responses_accepted, len(self.table)), (1, 0))
        self.assertEqual(self.run_until(100), [])
        self.assertEqual(self.counters.timeouts, 0)

    def test_wrong_source_is_dropped(self) -> None:
        """A response from another address or port than the request went to is counted and dropped."""
        self.start()
        self.assertIsNone(self.table.receive(reply(200), ("127.0.0.2", 5060), 0.1))
        self.assertIsNone(self.table.receive(reply(200), ("127.0.0.1", 5061), 0.1))
        self.assertEqual(self.counters.dropped_wrong_source, 2)
        self.assertIsInstance(self.table.receive(reply(200), DEST, 0.1), Deliver)

    def test_cseq_mismatch_is_dropped(self) -> None:
        """Another CSeq number or method is counted and dropped; the transaction goes on."""
        self.start()
        self.assertIsNone(self.table.receive(reply(200, cseq="2 REGISTER"), DEST, 0.1))
        self.assertIsNone(self.table.receive(reply(200, cseq="1 OPTIONS"), DEST, 0.1))
        self.assertEqual((self.counters.dropped_cseq_mismatch, self.counters.responses_accepted, len(self.table)), (2, 0, 1))

    def test_unknown_branch_and_malformed_are_dropped(self) -> None:
        """No transaction for the branch, or no readable Via: counted apart."""
        self.start()
        self.assertIsNone(self.table.receive(reply(200, branch="z9hG4bKother"), DEST, 0.1))
        self.assertIsNone(self.table.receive(Response(headers=[("cseq", "1 REGISTER")], body=b"", status=200), DEST, 0.1))
        self.assertEqual((self.counters.dropped_no_transaction, self.counters.dropped_malformed, len(self.table)), (1, 1, 1))

    def test_timer_k_absorbs_retransmitted_responses(self) -> None:
        """For T4 after completion the same final response is absorbed; then it finds no transaction."""
        self.start()
        self.table.receive(reply(200), DEST, 1.0)
        self.assertIsNone(self.table.receive(reply(200), DEST, 5.9))
        self.assertEqual(self.counters.absorbed_retransmissions, 1)
        # Only from where the request went, for its CSeq.
        self.table.receive(reply(200), ("127.0.0.2", 5060), 2.0)
        self.table.receive(reply(200, cseq="2 REGISTER"), DEST, 2.0)
        self.assertEqual((self.counters.absorbed_retransmissions, self.counters.dropped_no_transaction), (1, 2))
        self.assertEqual(self.table.next_deadline(), 6.0)
        self.assertEqual(self.table.on_timer(6.0), [])
        self.assertIsNone(self.table.next_deadline())
        self.table.receive(reply(200), DEST, 6.0)
        self.assertEqual((self.counters.absorbed_retransmissions, self.counters.dropped_no_transaction), (1, 3))

    def test_timer_k_ends_at_t4_even_before_it_is_swept(self) -> None:
        """A response at or after T4 is not absorbed though on_timer has not run yet."""
        self.start()
        self.table.receive(reply(200), DEST, 1.0)
        self.table.receive(reply(200), DEST, 6.0)
        self.assertEqual((self.counters.absorbed_retransmissions, self.counters.dropped_no_transaction), (0, 1))


class ReliableTests(MachineTestCase):
    def test_no_retransmissions_only_timer_f(self) -> None:
        """Over a stream nothing is retransmitted, even after a 1xx; Timer F still fires at 64*T1."""
        self.assertEqual(self.start(reliable=True), Transmit(b"REQ", DEST, "u1", False))
        self.table.receive(reply(100), DEST, 1.0)
        self.assertEqual(self.run_until(100), [(32.0, TimedOut("u1"))])
        self.assertEqual(self.counters.timeouts, 1)

    def test_no_timer_k(self) -> None:
        """Timer K is zero: the completed transaction is forgotten at once."""
        self.start(reliable=True)
        self.assertIsInstance(self.table.receive(reply(200), DEST, 1.0), Deliver)
        self.assertIsNone(self.table.next_deadline())
        self.table.receive(reply(200), DEST, 1.0)
        self.assertEqual((self.counters.absorbed_retransmissions, self.counters.dropped_no_transaction), (0, 1))


class EndingTests(MachineTestCase):
    def test_abort_times_out_the_chosen_transactions(self) -> None:
        """A broken stream ends its transactions at once (not counted as timeouts: the loss is counted); the others run on."""
        peer, other = ("192.0.2.1", 5061), ("192.0.2.2", 5061)
        self.start(key="a", user="stream to peer", reliable=True, dest=peer)
        self.start(key="b", user="stream to other", reliable=True, dest=other)
        self.start(key="c", user="udp to peer", dest=peer)
        timed_out = self.table.abort(lambda t: t.reliable and t.dest == peer, 1.0)
        self.assertEqual(timed_out, [TimedOut("stream to peer")])
        self.assertEqual((self.counters.timeouts, len(self.table)), (0, 2))
        self.assertIsNone(self.table.receive(reply(200, branch="a"), peer, 1.5))
        self.assertEqual(self.counters.dropped_no_transaction, 1)
        self.assertEqual(
            sorted(action.user for _, action in self.run_until(100) if isinstance(action, TimedOut)),
            ["stream to other", "udp to peer"],
        )

    def test_response_over_another_socket_or_connection_dropped(self) -> None:
        """A response must come back over the socket or connection its request went over (a datagram cannot answer a TLS request)."""
        tls_link, udp_socket = object(), object()
        self.table.start(0.0, "z9hG4bKt", DEST, b"REQ", 1, "over tls", True, tls_link)
        self.assertIsNone(self.table.receive(reply(200, branch="z9hG4bKt"), DEST, 0.1, udp_socket))
        self.assertEqual(self.counters.dropped_wrong_source, 1)
        self.assertEqual(self.table.receive(reply(200, branch="z9hG4bKt"), DEST, 0.2, tls_link), Deliver("over tls", reply(200, branch="z9hG4bKt")))

    def test_cancel_leaves_nothing(self) -> None:
        """A transaction whose first send failed is dropped without an outcome."""
        self.start()
        self.table.cancel("z9hG4bKb1")
        self.assertEqual((len(self.table), self.table.next_deadline(), self.table.on_timer(100)), (0, None, []))
        self.assertEqual(self.counters.timeouts, 0)

    def test_key_in_progress_is_refused(self) -> None:
        """Starting a branch already in progress raises and leaves the first transaction alone."""
        self.start()
        self.assertRaises(ValueError, self.start, key="z9hG4bKb1", user="u2")
        self.assertEqual(self.run_until(100)[-1], (32.0, TimedOut("u1")))

    def test_clear_forgets_everything(self) -> None:
        """After clear() nothing is due and nothing matches."""
        self.start(key="a")
        self.start(key="b")
        self.table.receive(reply(200, branch="b"), DEST, 0.1)
        self.table.clear()
        self.assertEqual((len(self.table), self.table.next_deadline(), self.table.on_timer(100)), (0, None, []))
        self.table.receive(reply(200, branch="b"), DEST, 0.2)
        self.assertEqual(self.counters.absorbed_retransmissions, 0)

    def test_cancelled_entries_do_not_pile_up(self) -> None:
        """Transactions completed before their first retransmission leave the heap bounded, not one entry each."""
        for i in range(10_000):
            self.start(now=i * 1e-5, key=f"k{i}")
            self.table.receive(reply(200, branch=f"k{i}"), DEST, i * 1e-5)
        self.assertLess(len(self.table._heap), 600)
        self.assertEqual(self.run_until(1000), [])


class PurityTests(SynchronousTestCase):
    def test_imports_no_twisted(self) -> None:
        """The machine loads without Twisted, zope or the project's upper layers."""
        root = Path(uacregistrant.__file__).resolve().parents[1]
        code = (
            "import sys, uacregistrant.net.transaction\n"
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope', 'uacregistrant'))))"
        )
        env = dict(os.environ, PYTHONPATH=str(root))
        loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
        allowed = {"uacregistrant", "uacregistrant.net", "uacregistrant.net.transaction", "uacregistrant.core", "uacregistrant.core.counters"}
        self.assertEqual([m for m in loaded if m not in allowed and m.partition(".")[2].partition(".")[0] != "sip"], [])
        self.assertIn("uacregistrant.net.transaction", loaded)
