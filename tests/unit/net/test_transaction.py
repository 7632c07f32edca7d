"""Tests for client transactions and the pacer/walker on a fake clock."""

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.core.account import Account
from uacregistrant.core.registrant import Policy, Registrant
from uacregistrant.core.registry import Registry
from uacregistrant.sip.message import Response, parse_message
from uacregistrant.core.counters import SipCounters
from uacregistrant.net.transaction import TransactionLayer
from uacregistrant.schedule.walker import BucketWalker, Pacer


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[float, bytes]] = []
        self.clock: Clock | None = None

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.clock is not None
        self.sent.append((self.clock.seconds(), data))


def reply(status: int, branch: str = "z9hG4bKb1", cseq: int = 1) -> Response:
    message = parse_message(
        f"SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP h;branch={branch}\r\nCSeq: {cseq} REGISTER\r\n"
        "To: <sip:a@h>;tag=t\r\nFrom: <sip:a@h>;tag=f\r\nCall-ID: c\r\n\r\n".encode()
    )
    assert isinstance(message, Response)
    return message


class TransactionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.counters = SipCounters()
        self.layer = TransactionLayer(self.clock, self.counters, t1=0.5)
        self.sender = Recorder()
        self.sender.clock = self.clock
        self.finals: list[int] = []
        self.timeouts = 0

    def start(self) -> None:
        def timeout() -> None:
            self.timeouts += 1

        self.layer.start(self.sender, ("127.0.0.1", 5060), b"REQ", "z9hG4bKb1", 1, lambda r: self.finals.append(r.status), timeout)

    def test_timer_e_and_f(self) -> None:
        """Retransmits at 0.5, 1.5, 3.5, 7.5, then every 4 s; Timer F at 32 s."""
        self.start()
        self.clock.pump([0.25] * 160)
        times = [t for t, _ in self.sender.sent]
        self.assertEqual(times[:6], [0, 0.5, 1.5, 3.5, 7.5, 11.5])
        self.assertEqual(times[-1], 31.5)
        self.assertEqual(self.timeouts, 1)
        self.assertEqual(len(self.layer), 0)

    def test_provisional_switches_to_t2(self) -> None:
        """After a 1xx, retransmissions come every T2."""
        self.start()
        self.layer.receive(reply(100), ("127.0.0.1", 5060))
        self.clock.pump([0.5] * 20)
        self.assertEqual([t for t, _ in self.sender.sent], [0, 4, 8])

    def test_final_and_filters(self) -> None:
        """Only the right branch, CSeq and source complete it; duplicates are absorbed."""
        self.start()
        self.layer.receive(reply(200), ("127.0.0.2", 5060))
        self.layer.receive(reply(200, cseq=2), ("127.0.0.1", 5060))
        self.layer.receive(reply(200, branch="z9hG4bKx"), ("127.0.0.1", 5060))
        self.assertEqual(self.finals, [])
        self.layer.receive(reply(200), ("127.0.0.1", 5060))
        self.layer.receive(reply(200), ("127.0.0.1", 5060))
        self.assertEqual(self.finals, [200])
        self.assertEqual(
            (self.counters.dropped_wrong_source, self.counters.dropped_cseq_mismatch,
             self.counters.dropped_no_transaction, self.counters.absorbed_retransmissions),
            (1, 1, 1, 1),
        )
        self.clock.advance(40)
        self.assertEqual((self.timeouts, len(self.sender.sent)), (0, 1))
        self.layer.receive(reply(200), ("127.0.0.1", 5060))
        self.assertEqual(self.counters.dropped_no_transaction, 2)


class WalkerTests(SynchronousTestCase):
    def test_slices_and_pacing(self) -> None:
        """A 5000-record bucket is scanned in slices and sent at the paced rate."""
        clock = Clock()
        registry = Registry(0)
        policy = Policy(rng=random.Random(3))
        for i in range(5000):
            registry.add(Registrant(Account(row_id=i, aor=f"sip:u{i}@x", registrar="sip:x", binding_uri=f"sip:u{i}@h", expiry=600), policy))
        sent: list[float] = []
        pacer = Pacer(clock, 1000, lambda r: sent.append(clock.seconds()) or r.start(clock.seconds()))
        walker = BucketWalker(registry, clock, 100, pacer, slice_size=2000)
        walker.tick()
        self.assertEqual(len(pacer), 2000)
        clock.advance(0)
        self.assertGreaterEqual(len(pacer) + len(sent), 4000)
        for _ in range(600):
            clock.advance(0.01)
        self.assertEqual(len(sent), 5000)
        per_second = [sum(1 for t in sent if s <= t < s + 1) for s in range(5)]
        self.assertTrue(all(950 <= n <= 1030 for n in per_second), per_second)

    def test_precise_wake_before_next_visit(self) -> None:
        """A record due between visits is woken at its time, not at the next visit."""
        clock = Clock()
        registry = Registry(0)
        registrant = Registrant(Account(row_id=1, aor="sip:a@x", registrar="sip:x", binding_uri="sip:a@h", expiry=600), Policy())
        registry.add(registrant)
        registrant.next_at = 37.0
        sent: list[float] = []
        pacer = Pacer(clock, 10, lambda r: sent.append(clock.seconds()) or r.start(clock.seconds()))
        walker = BucketWalker(registry, clock, 100, pacer)
        walker.tick()
        clock.pump([1] * 40)
        self.assertEqual(sent, [37.0])
