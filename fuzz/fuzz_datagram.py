"""
Coverage-guided fuzzing of the datagram entry point with atheris.

    pip install atheris && python fuzz/fuzz_datagram.py -max_total_time=600

Each input is one exchange: up to six datagrams separated by
C{\\x00||\\x00}, each delivered in turn to the daemon's own transport,
transaction layer, client, pacer and a real L{Registrant} registering at
127.0.0.1:5080 (C{$BRANCH} and C{$CSEQ} in a datagram are replaced by the
live transaction's, so mutations reach the state machine, not only the
filters).  After each datagram, and 40 s of fake time after the last, the
record must have pending work: a transaction, a follow-up waiting for the
pacer, or a retry time.  A wedged record, an internal error, any exception
but the codec's own from the parser's accessors, or a crash is a finding;
libFuzzer prints the input and stops.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import atheris  # noqa: E402

# Twisted is imported first so that only this project's code is instrumented.
import twisted.internet.protocol  # noqa: E402,F401
import twisted.internet.task  # noqa: E402,F401
import twisted.logger  # noqa: E402,F401
import twisted.names.client  # noqa: E402,F401

with atheris.instrument_imports(include=["uacregistrant"]):
    import uacregistrant.agent.client  # noqa: F401
    import uacregistrant.core.registrant  # noqa: F401
    import uacregistrant.sip.digest  # noqa: F401
    import uacregistrant.sip.message  # noqa: F401
    import uacregistrant.net.transaction  # noqa: F401
    import uacregistrant.net.transaction_layer  # noqa: F401
    import uacregistrant.net.transport  # noqa: F401

from tests.fuzzing import SEEDS, RegistrantScenario, touch_everything  # noqa: E402


def one_input(data: bytes) -> None:
    RegistrantScenario().feed(data)
    touch_everything(data)


def main() -> None:
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        # No corpus directory given: start from a few real exchanges.
        import tempfile

        corpus = tempfile.mkdtemp(prefix="uacreg-fuzz-")
        for i, seed in enumerate(SEEDS):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(seed)
        argv.append(corpus)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
