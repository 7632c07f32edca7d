"""
Which build of the package the tests run against: pure Python, or with
the hot modules compiled by mypyc (built in place: see setup.py).

A few tests look at what only one build can show (a method wrapped at
run time, the identity of an int kept in a native attribute) and say so.
"""

from __future__ import annotations

import uacregistrant.agent.client
import uacregistrant.core.registrant

#: The state machine (and the rest of core/, sip/ and the transaction machine) is compiled.
COMPILED = not uacregistrant.core.registrant.__file__.endswith(".py")

#: The registration client is compiled too (the build had Twisted's types).
CLIENT_COMPILED = not uacregistrant.agent.client.__file__.endswith(".py")

#: Why a pure-Python-only test is skipped in the compiled build.
PURE_ONLY = "compiled by mypyc: a compiled class cannot be patched at run time (the pure build's run covers this)"
