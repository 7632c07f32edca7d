"""Random tokens cut from a buffer."""

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.sip.tokens import RandomTokens


class RandomTokensTests(SynchronousTestCase):
    def test_length_and_alphabet(self) -> None:
        tokens = RandomTokens(block=64)
        for size in (1, 8, 10, 21, 100):
            token = tokens.hex(size)
            self.assertEqual(len(token), 2 * size)
            int(token, 16)

    def test_no_repeats_across_refills(self) -> None:
        """Tokens never reuse bytes, also across buffer refills and for requests larger than a block."""
        tokens = RandomTokens(block=50)
        seen = [tokens.hex(10) for _ in range(2000)] + [tokens.hex(80) for _ in range(10)]
        self.assertEqual(len(set(seen)), len(seen))
