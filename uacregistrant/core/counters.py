# -*- test-case-name: tests.unit.control.test_metrics,tests.unit.agent.test_client,tests.unit.agent.test_recovery,tests.unit.net.test_transaction -*-
"""Counters of what the SIP layer sent, received, dropped and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Final


@dataclass(slots=True)
class SipCounters:
    """Monotonic counters shared by the transports and the transactions."""

    requests_sent: int = 0
    retransmissions: int = 0
    send_errors: int = 0
    timeouts: int = 0
    datagrams_received: int = 0
    responses_accepted: int = 0
    #: Responses accepted for a transaction, by class (provisional ones too).
    responses_1xx: int = 0
    responses_2xx: int = 0
    responses_3xx: int = 0
    responses_4xx: int = 0
    responses_5xx: int = 0
    responses_6xx: int = 0
    dropped_oversized: int = 0
    dropped_malformed: int = 0
    dropped_requests: int = 0
    dropped_no_transaction: int = 0
    dropped_wrong_source: int = 0
    dropped_cseq_mismatch: int = 0
    absorbed_retransmissions: int = 0
    #: Registrations renewed only after their binding had expired.
    lapsed_registrations: int = 0
    #: Retries brought forward because their registrar answered again.
    early_retries: int = 0
    #: Retries brought forward to another target of the same hop (a
    #: timeout or a 503 without Retry-After from the one tried).
    fail_overs: int = 0
    #: 200s listing no Contact of ours: the granted expiry was guessed.
    expiry_guesses: int = 0
    #: Records put in INTERNAL_ERROR by an unexpected failure.
    internal_errors: int = 0
    #: Requests from peers (OPTIONS pings and others) answered statelessly.
    requests_answered: int = 0
    #: Requests from peers not answered: over the per-source rate limit.
    requests_rate_limited: int = 0
    #: TCP/TLS connections opened (TLS: handshake and identity check done).
    connections_opened: int = 0
    #: TCP/TLS connections that could not be opened (refused, timed out, TLS failure).
    connection_failures: int = 0
    #: Open TCP/TLS connections that broke (reset, closed by the peer, bad framing, no pong).
    connections_lost: int = 0
    #: Keep-alive pings that got no pong in time.
    keepalive_failures: int = 0

    def count_response_class(self, status: int) -> None:
        """Count an accepted response in its class (C{status} 100-699, as the parser ensures; others are ignored)."""
        names = _RESPONSE_CLASSES
        index = status // 100 - 1
        if 0 <= index < len(names):
            name = names[index]
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return asdict(self)


#: The counters of L{SipCounters.count_response_class}, by class - 1.
_RESPONSE_CLASSES: Final = tuple(f"responses_{n}xx" for n in range(1, 7))
