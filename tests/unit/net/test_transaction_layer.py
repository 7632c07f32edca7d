"""
The transaction layer on a fake reactor clock: it sends, retransmits,
times out and stops as the pure machine says.  (The machine itself is
tested in L{tests.unit.net.test_transaction}.)
"""

from __future__ import annotations


from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.counters import SipCounters
from uacregistrant.net.transaction_layer import TransactionLayer
from uacregistrant.schedule.timers import TimerQueue
from uacregistrant.sip.message import Response, parse_message

DEST = ("127.0.0.1", 5060)


class Recorder:
    """A sender that notes when it sent what, and fails the sends listed in C{fail}."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, bytes]] = []
        self.fail: set[int] = set()
        self.attempts = 0

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        self.attempts += 1
        if self.attempts in self.fail:
            raise OSError("No buffer space available")
        self.sent.append((self.clock.seconds(), data))


def reply(status: int, branch: str = "z9hG4bKb1", cseq: int = 1) -> Response:
    message = parse_message(
        f"SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP h;branch={branch}\r\nCSeq: {cseq} REGISTER\r\n"
        "To: <sip:a@h>;tag=t\r\nFrom: <sip:a@h>;tag=f\r\nCall-ID: c\r\n\r\n".encode()
    )
    assert isinstance(message, Response)
    return message


class TransactionLayerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = SipCounters()
        self.layer = TransactionLayer(self.clock, self.counters, t1=0.5)
        self.sender = Recorder(self.clock)
        self.finals: list[tuple[str, int]] = []
        self.timeouts: list[str] = []
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def start(self, branch: str = "z9hG4bKb1") -> None:
        self.layer.start(
            self.sender,
            DEST,
            b"REQ",
            branch,
            1,
            lambda r: self.finals.append((branch, r.status)),
            lambda reason: self.timeouts.append(branch),
        )

    def pending_calls(self) -> int:
        return len([call for call in self.clock.getDelayedCalls() if call.active()])

    def test_sends_retransmits_and_times_out(self) -> None:
        """Sent at once, retransmitted at 0.5, 1.5, 3.5, 7.5, then every 4 s; on_timeout at 32 s, and nothing left armed."""
        self.start()
        self.clock.pump([0.25] * 160)
        times = [t for t, _ in self.sender.sent]
        self.assertEqual(times, [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        self.assertEqual(self.timeouts, ["z9hG4bKb1"])
        self.assertEqual((self.counters.requests_sent, self.counters.retransmissions, self.counters.timeouts), (1, 10, 1))
        self.assertEqual((len(self.layer), self.pending_calls()), (0, 0))

    def test_final_response_stops_retransmissions(self) -> None:
        """A final response reaches on_final; no retransmission or timeout follows, and Timer K lets go of the reactor."""
        self.start()
        self.clock.advance(0.6)
        self.layer.receive(reply(200), DEST)
        self.layer.receive(reply(200), DEST)
        self.assertEqual(self.finals, [("z9hG4bKb1", 200)])
        self.assertEqual(self.counters.absorbed_retransmissions, 1)
        self.clock.pump([1] * 40)
        self.assertEqual((len(self.sender.sent), self.timeouts, self.pending_calls()), (2, [], 0))

    def test_provisional_switches_to_t2(self) -> None:
        """After a 1xx, retransmissions come every T2."""
        self.start()
        self.layer.receive(reply(100), DEST)
        self.clock.pump([0.5] * 20)
        self.assertEqual([t for t, _ in self.sender.sent], [0, 4, 8])

    def test_new_transaction_moves_the_wake_up_earlier(self) -> None:
        """A transaction started while the timer waits for a later deadline gets its first retransmission at T1 all the same."""
        self.start("z9hG4bKa")
        self.layer.receive(reply(100, branch="z9hG4bKa"), DEST)  # its next retransmission: at 4 s
        self.clock.advance(1.0)
        self.start("z9hG4bKb")
        self.sender.sent.clear()
        self.clock.pump([0.25] * 12)
        self.assertEqual([t for t, _ in self.sender.sent], [1.5, 2.5, 4.0])

    def test_one_reactor_call_for_many_transactions(self) -> None:
        """Thousands of transactions keep a single delayed call on the reactor."""
        for i in range(2000):
            self.start(f"z9hG4bK{i}")
            self.clock.advance(0.001)
        self.assertEqual(self.pending_calls(), 1)
        self.clock.pump([0.5] * 70)
        self.assertEqual((len(self.timeouts), self.pending_calls()), (2000, 0))

    def test_first_send_failure_leaves_nothing(self) -> None:
        """OSError on the first send reaches the caller, nothing is counted as sent, nothing runs."""
        self.sender.fail = {1}
        self.assertRaises(OSError, self.start)
        self.assertEqual((len(self.layer), self.counters.requests_sent, self.pending_calls()), (0, 0, 0))
        self.clock.pump([1] * 40)
        self.assertEqual((self.sender.sent, self.timeouts, self.counters.timeouts), ([], [], 0))
        self.start()  # the branch is free again
        self.assertEqual(len(self.layer), 1)

    def test_any_first_send_failure_leaves_nothing(self) -> None:
        """Not only OSError: whatever the first send raises, no orphan transaction retransmits or times out."""
        def overflow(data: bytes, dest: tuple[str, int]) -> None:
            raise OverflowError("port out of range")

        self.patch(self.sender, "send", overflow)
        self.assertRaises(OverflowError, self.start)
        self.assertEqual((len(self.layer), self.pending_calls()), (0, 0))
        self.clock.pump([1] * 40)
        self.assertEqual((self.timeouts, self.counters.timeouts), ([], 0))

    def test_retransmission_failure_is_counted_and_logged(self) -> None:
        """A failed retransmission is counted and logged; the transaction goes on to its next one."""
        self.sender.fail = {2}
        self.start()
        self.clock.pump([0.5] * 4)
        self.assertEqual([t for t, _ in self.sender.sent], [0, 1.5])
        self.assertEqual((self.counters.send_errors, self.counters.retransmissions), (1, 1))
        warnings = [e for e in self.events if e["log_level"].name == "warn"]
        self.assertEqual([(e["dest"], e["error"]) for e in warnings], [(DEST, "No buffer space available")])

    def test_failing_callback_spares_the_others(self) -> None:
        """An on_timeout that raises is logged; the other transactions due at the same time still time out."""
        def fail(reason: str | None) -> None:
            raise RuntimeError("boom")

        self.layer.start(self.sender, DEST, b"REQ", "z9hG4bKbad", 1, lambda r: None, fail)
        self.start()
        self.clock.pump([1] * 40)
        self.assertEqual(self.timeouts, ["z9hG4bKb1"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([e["what"] for e in self.events if "log_failure" in e], ["timeout"])
        self.assertEqual(self.pending_calls(), 0)

    def test_timeout_callback_may_start_a_transaction(self) -> None:
        """A transaction started from on_timeout gets its own retransmissions."""
        self.layer.start(self.sender, DEST, b"FIRST", "z9hG4bKa", 1, lambda r: None, lambda reason: self.start())
        self.clock.pump([0.5] * 64)
        self.assertEqual(self.sender.sent[-1], (32.0, b"REQ"))
        self.clock.advance(0.5)
        self.assertEqual(self.sender.sent[-1], (32.5, b"REQ"))

    def test_stop_cancels_everything(self) -> None:
        """stop() cancels the timer and forgets the transactions: nothing is sent or reported afterwards."""
        self.start()
        self.layer.stop()
        self.assertEqual((len(self.layer), self.pending_calls()), (0, 0))
        self.clock.pump([1] * 40)
        self.assertEqual((len(self.sender.sent), self.timeouts), (1, []))
        self.layer.receive(reply(200), DEST)
        self.assertEqual((self.finals, self.counters.dropped_no_transaction), ([], 1))

    def test_stop_leaves_a_shared_queue_running(self) -> None:
        """With a shared timer queue, stop() cancels only the layer's own timer."""
        timers = TimerQueue(self.clock)
        self.layer = TransactionLayer(self.clock, self.counters, timers=timers)
        self.start()
        fired: list[float] = []
        timers.call_later(2, fired.append, 2.0)
        self.layer.stop()
        self.clock.pump([1] * 40)
        self.assertEqual((len(self.sender.sent), self.timeouts, fired), (1, [], [2.0]))

    def test_timer_settings(self) -> None:
        """t1, t2 and t4 read back, and a changed T1 applies to the next transaction."""
        layer = TransactionLayer(self.clock, self.counters, t1=0.25, t2=2.0, t4=3.0)
        self.assertEqual((layer.t1, layer.t2, layer.t4), (0.25, 2.0, 3.0))
        layer.t1 = 1.0
        layer.start(self.sender, DEST, b"REQ", "z9hG4bKb1", 1, lambda r: None, lambda reason: None)
        self.clock.pump([0.5] * 4)
        self.assertEqual([t for t, _ in self.sender.sent], [0, 1.0])


# These exercise the schedule package; they live here until it has a
# test module of its own for the walker and the pacer.


class ReliableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = SipCounters()
        self.layer = TransactionLayer(self.clock, self.counters, t1=0.5)
        self.sender = Recorder(self.clock)
        self.outcomes: list[tuple[str, str | None]] = []

    def start(self, branch: str, sender: Recorder) -> None:
        self.layer.start(sender, DEST, b"REQ", branch, 1, lambda r: None, lambda reason: self.outcomes.append((branch, reason)), reliable=True)

    def test_no_retransmission_on_a_stream(self) -> None:
        """Sent once; Timer F still ends it at 64*T1 (RFC 3261 §17.1.2.2)."""
        self.start("z9hG4bKs", self.sender)
        self.clock.pump([1] * 40)
        self.assertEqual([t for t, _ in self.sender.sent], [0])
        self.assertEqual(self.outcomes, [("z9hG4bKs", None)])

    def test_abort_ends_only_that_senders_transactions(self) -> None:
        """A broken stream ends its own transactions at once, with the reason; the others run on."""
        other = Recorder(self.clock)
        self.start("z9hG4bKa", self.sender)
        self.start("z9hG4bKb", other)
        self.assertEqual(self.layer.abort(self.sender, "connection reset"), 1)
        self.assertEqual(self.outcomes, [("z9hG4bKa", "connection reset")])
        self.assertEqual(len(self.layer), 1)
        self.clock.pump([1] * 40)
        self.assertEqual(self.outcomes, [("z9hG4bKa", "connection reset"), ("z9hG4bKb", None)])
