"""ControlListener: listens once, from privilegedStartService if it can; fails loudly at once, logs a later failure."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from uacregistrant.control.listener import ControlListener


class FakePort:
    def __init__(self) -> None:
        self.stopped = 0
        self.stopping: defer.Deferred[None] = defer.Deferred()

    def stopListening(self) -> defer.Deferred[None]:
        self.stopped += 1
        return self.stopping


@implementer(IStreamServerEndpoint)
class FakeEndpoint:
    """Answers each listen() with the next of C{results} (a Deferred or a port)."""

    def __init__(self, *results: object) -> None:
        self.results = list(results)
        self.factories: list[object] = []

    def listen(self, factory: object) -> defer.Deferred[object]:
        self.factories.append(factory)
        result = self.results.pop(0)
        if isinstance(result, defer.Deferred):
            return result
        return defer.succeed(result)


def refused() -> CannotListenError:
    return CannotListenError("", "/run/uacregistrant.ctl", OSError(98, "Address already in use"))


class ControlListenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.factory = Factory.forProtocol(Protocol)

    def test_listens_in_privileged_start_only_once(self) -> None:
        """privilegedStartService listens with the factory; startService after it does not listen again."""
        port = FakePort()
        endpoint = FakeEndpoint(port, FakePort())
        listener = ControlListener(endpoint, self.factory)
        listener.privilegedStartService()
        self.assertEqual(endpoint.factories, [self.factory])
        listener.startService()
        self.assertEqual(len(endpoint.factories), 1)
        self.assertTrue(listener.running)
        listener.stopService()
        self.assertEqual(port.stopped, 1)

    def test_start_service_alone_listens(self) -> None:
        """Without a privileged start (e.g. added to a running parent), startService listens."""
        endpoint = FakeEndpoint(FakePort())
        listener = ControlListener(endpoint, self.factory)
        listener.startService()
        self.assertEqual(endpoint.factories, [self.factory])

    def test_immediate_failure_raises(self) -> None:
        """A listen that fails at once raises from the start method, so the daemon refuses to start; a later start tries again."""
        port = FakePort()
        endpoint = FakeEndpoint(defer.fail(refused()), port)
        listener = ControlListener(endpoint, self.factory)
        with self.assertRaises(CannotListenError) as raised:
            listener.privilegedStartService()
        self.assertEqual(raised.exception.port, "/run/uacregistrant.ctl")
        self.assertEqual(self.flushLoggedErrors(CannotListenError), [])  # raised, not (also) logged
        listener.startService()
        self.assertEqual(len(endpoint.factories), 2)
        listener.stopService()
        self.assertEqual(port.stopped, 1)

    def test_later_failure_logged(self) -> None:
        """A listen that fails after the start method returned is logged, not raised."""
        pending: defer.Deferred[object] = defer.Deferred()
        listener = ControlListener(FakeEndpoint(pending), self.factory)
        listener.privilegedStartService()
        listener.startService()
        self.assertEqual(self.flushLoggedErrors(CannotListenError), [])
        pending.errback(refused())
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)
        self.assertIsNone(listener.stopService())  # no port to stop

    def test_stop_stops_the_port(self) -> None:
        """stopService stops the listening port and returns its Deferred; the next start listens anew."""
        first, second = FakePort(), FakePort()
        endpoint = FakeEndpoint(first, second)
        listener = ControlListener(endpoint, self.factory)
        listener.privilegedStartService()
        listener.startService()
        stopping = listener.stopService()
        self.assertIs(stopping, first.stopping)
        self.assertEqual(first.stopped, 1)
        self.assertFalse(listener.running)
        self.assertIsNone(listener.stopService())  # stopped already: the port is not stopped twice
        self.assertEqual(first.stopped, 1)
        listener.startService()
        self.assertEqual(len(endpoint.factories), 2)
        listener.stopService()
        self.assertEqual(second.stopped, 1)

    def test_port_arriving_after_stop_is_closed(self) -> None:
        """A listen still under way when the service stops: the port it yields later is stopped at once."""
        pending: defer.Deferred[object] = defer.Deferred()
        listener = ControlListener(FakeEndpoint(pending), self.factory)
        listener.startService()
        listener.stopService()
        port = FakePort()
        pending.callback(port)
        self.assertEqual(port.stopped, 1)
