"""
Memory the core alone keeps per record (issue 14: where a compiled build's
extra memory comes from): 20,000 Registrants made, then each taken through
REGISTER, 401, the digest answer and 200, with one shared policy and
tables; pymalloc blocks and resident set per record after each phase.
No service, no sockets, no clock.

    python bench/core_memory.py                 # the build the tree holds (pure, or compiled in place)
"""

import gc
import os
import sys

import uacregistrant.core.registrant as registrant_module
from uacregistrant.core.account import Account
from uacregistrant.core.registrant import Policy, Registrant
from uacregistrant.sip.message import Response, parse_message
from uacregistrant.sip.sharing import SharedTables

RECORDS = 20000


def response(shared: SharedTables, status: int, reason: str, headers: str, i: int, cseq: int) -> Response:
    """A registrar's response to record C{i}'s request C{cseq}."""
    message = parse_message(
        (f"SIP/2.0 {status} {reason}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{i}\r\nCSeq: {cseq} REGISTER\r\n"
         f"To: <sip:u{i}@example.com>;tag=t\r\nFrom: <sip:u{i}@example.com>;tag=f\r\nCall-ID: c{i}\r\n{headers}\r\n").encode(),
        shared.names,
    )
    assert isinstance(message, Response)
    return message


def rss() -> int:
    """The resident set, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured() -> tuple[int, int]:
    gc.collect()
    return sys.getallocatedblocks(), rss()


def main() -> None:
    print("compiled" if not registrant_module.__file__.endswith(".py") else "pure")
    shared = SharedTables()
    policy = Policy(shared=shared)
    blocks0, rss0 = measured()
    records = [
        Registrant(Account(row_id=i, aor=f"sip:u{i}@example.com", registrar="sip:example.com",
                           binding_uri=f"sip:u{i}@192.0.2.1:5060", expiry=3600, username=f"u{i}", password="pw"), policy)
        for i in range(RECORDS)
    ]
    blocks1, rss1 = measured()
    challenge = 'WWW-Authenticate: Digest realm="r", nonce="n{i}", qop="auth", algorithm=MD5\r\n'
    for i, record in enumerate(records):
        record.start(0.0)
        record.on_response(response(shared, 401, "Unauthorized", challenge.format(i=i), i, record.cseq), 1.0)
        record.on_response(response(shared, 200, "OK", f"Contact: <sip:u{i}@192.0.2.1:5060>;expires=600\r\n", i, record.cseq), 2.0)
    blocks2, rss2 = measured()
    assert {r.state.name for r in records} == {"REGISTERED_STATE"}
    print(f"made: {(blocks1 - blocks0) / RECORDS:.2f} blocks and {(rss1 - rss0) / RECORDS:.0f} B of RSS per record; "
          f"registered: {(blocks2 - blocks1) / RECORDS:.2f} blocks and {(rss2 - rss1) / RECORDS:.0f} B more")


if __name__ == "__main__":
    main()
