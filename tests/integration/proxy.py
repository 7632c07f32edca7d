"""
A TCP forwarder on loopback for the tests: a client pointed at it reaches
the real server until the test cuts it off.

C{cut()} plays a network partition: nothing is relayed any more in either
direction (what was sent waits, as TCP would retransmit it), and new
connections are accepted but not connected through, so the client's
requests go unanswered rather than refused.  C{heal()} ends the partition:
by default every connection of the cut is reset (both ends closed), as
after a partition long enough for TCP to give up; C{heal(reset=False)}
delivers what waited instead, as after a short one.
"""

from __future__ import annotations

import socket
import threading


class Forwarder:
    """Relays 127.0.0.1:L{port} to C{target} (host, port) until cut."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        #: Set while the forwarder relays; cleared by cut().
        self._open = threading.Event()
        self._open.set()
        # Connections open now, by generation (a heal with reset starts a new one).
        self._generation = 0
        self._sockets: dict[int, list[socket.socket]] = {0: []}
        self._closed = False
        #: Connections accepted since the start.
        self.accepted = 0
        threading.Thread(target=self._accept_loop, name="forwarder-accept", daemon=True).start()

    @property
    def cut_off(self) -> bool:
        return not self._open.is_set()

    def cut(self) -> None:
        """Stop relaying, in both directions, on every connection (old and new)."""
        self._open.clear()

    def heal(self, reset: bool = True) -> None:
        """Relay again; C{reset}: the connections of the cut are closed first."""
        if reset:
            with self._lock:
                old, self._sockets[self._generation] = self._sockets[self._generation], []
                self._generation += 1
                self._sockets[self._generation] = []
            for s in old:
                _close(s)
        self._open.set()

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed = True
        _close(self._listener)
        with self._lock:
            every = [s for group in self._sockets.values() for s in group]
            self._sockets = {self._generation: []}
        for s in every:
            _close(s)
        self._open.set()  # wake the pumps so that they end

    def _track(self, generation: int, *sockets: socket.socket) -> bool:
        with self._lock:
            if self._closed or generation != self._generation:
                return False
            self._sockets[generation].extend(sockets)
            return True

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._connect, args=(client,), name="forwarder-connect", daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        generation = self._generation
        if not self._track(generation, client):
            _close(client)
            return
        # A partition: the connection is accepted here but goes nowhere until healed.
        self._open.wait()
        if self._closed or generation != self._generation:
            _close(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            _close(client)
            return
        if not self._track(generation, upstream):
            _close(client)
            _close(upstream)
            return
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(generation, source, sink), name="forwarder-pump", daemon=True).start()

    def _pump(self, generation: int, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                # Held while cut (a reset at the heal closes both ends).
                self._open.wait()
                if self._closed or generation != self._generation:
                    break
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
