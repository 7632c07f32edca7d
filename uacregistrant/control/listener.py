# -*- test-case-name: tests.unit.control.test_listener,tests.unit.control.test_access -*-
"""A control endpoint as a child service that fails loudly when it cannot listen."""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger(namespace=__name__)


class ControlListener(Service):
    """
    Listens on C{endpoint} with C{factory} from C{privilegedStartService}
    (a UNIX socket under a root-owned directory) or C{startService}.

    Unlike L{twisted.application.internet.StreamServerEndpointService}, a
    listen that fails at once raises there, so the daemon refuses to start
    instead of running without its console.

    @param on_listening: called as soon as the endpoint listens, before the
        reactor accepts a connection on it (a UNIX socket is given its
        owner and group: L{ControlEndpoint.apply_ownership}); an C{OSError}
        it raises closes the port and fails the listen (a
        L{CannotListenError}).
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        on_listening: Callable[[], None] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._on_listening = on_listening
        self._port: IListeningPort | None = None
        self._listening = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        failures: list[Failure] = []
        at_once = True

        def failed(failure: Failure) -> None:
            if at_once:
                failures.append(failure)
            else:
                _log.failure("control endpoint {endpoint!r} failed to listen", failure, endpoint=self._endpoint)

        self._endpoint.listen(self._factory).addCallback(self._listened).addErrback(failed)
        at_once = False
        if failures:
            self._listening = False
            failures[0].raiseException()

    def _listened(self, port: IListeningPort) -> None:
        if not self._listening:
            port.stopListening()  # stopped while the listen was under way
            return
        if self._on_listening is not None:
            try:
                self._on_listening()
            except OSError as e:
                port.stopListening()
                self._listening = False
                address = port.getHost()
                name = getattr(address, "name", None) or str(address)
                where = name if isinstance(name, bytes) else str(name).encode("utf-8", "replace")
                raise CannotListenError(None, where, OSError(e.errno, f"cannot give it its owner and group: {e.strerror}")) from None
        self._port = port

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        self._listening = False
        if port is not None:
            return port.stopListening()
        return None
