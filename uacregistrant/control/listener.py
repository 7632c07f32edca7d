# -*- test-case-name: tests.unit.control.test_listener -*-
"""A control endpoint as a child service that fails loudly when it cannot listen."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


class ControlListener(Service):
    """
    Listens on C{endpoint} with C{factory} from C{privilegedStartService}
    (a UNIX socket under a root-owned directory) or C{startService}.

    Unlike L{twisted.application.internet.StreamServerEndpointService}, a
    listen that fails at once raises there, so the daemon refuses to start
    instead of running without its console.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        self._endpoint = endpoint
        self._factory = factory
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

        self._endpoint.listen(self._factory).addCallbacks(self._listened, failed)
        at_once = False
        if failures:
            self._listening = False
            failures[0].raiseException()

    def _listened(self, port: IListeningPort) -> None:
        if not self._listening:
            port.stopListening()  # stopped while the listen was under way
            return
        self._port = port

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        self._listening = False
        if port is not None:
            return port.stopListening()
        return None
