"""SharedValues: one kept object per equal value, bounded."""

from twisted.trial.unittest import SynchronousTestCase

from uacregistrant.sip.sharing import SharedValues


class SharedValuesTests(SynchronousTestCase):
    def test_equal_values_share_the_first_object(self) -> None:
        values: SharedValues[str] = SharedValues()
        first = "".join(["bench", ".invalid"])
        second = "".join(["bench.", "invalid"])
        self.assertIsNot(first, second)
        self.assertIs(values.share(first), first)
        self.assertIs(values.share(second), first)

    def test_bounded(self) -> None:
        """Past the limit, new values come back as they are and nothing more is kept."""
        values: SharedValues[tuple[int, str]] = SharedValues(limit=2)
        values.share((200, "OK"))
        values.share((401, "Unauthorized"))
        late = (503, "".join(["Service ", "Unavailable"]))
        self.assertIs(values.share(late), late)
        self.assertIsNot(values.share((503, "Service Unavailable")), late)
        self.assertEqual(len(values), 2)
