# -*- test-case-name: tests.unit.sip.test_tokens -*-
"""
Random tokens (branches, cnonces, Call-IDs) from the operating system's
CSPRNG, read in blocks: one C{getrandom} call per few hundred tokens
instead of one per token.
"""

from __future__ import annotations

import os


class RandomTokens:
    """
    Hex tokens cut from a buffer of C{os.urandom} bytes, hex-encoded
    once per block (a token is then one slice of text).
    """

    def __init__(self, block: int = 4096) -> None:
        self._block = block
        self._hex = ""
        self._position = 0

    def hex(self, nbytes: int) -> str:
        """C{nbytes} fresh random bytes as hex (like L{secrets.token_hex})."""
        start = self._position
        end = start + 2 * nbytes
        if end > len(self._hex):
            self._hex = os.urandom(max(self._block, nbytes)).hex()
            start, end = 0, 2 * nbytes
        self._position = end
        return self._hex[start:end]


#: The process-wide token source.
token_hex = RandomTokens().hex
