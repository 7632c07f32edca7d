# -*- test-case-name: tests.unit.core.test_registrant,tests.unit.sip.test_digest,tests.unit.sip.test_fuzz -*-
"""The codec's own error types."""


class SipParseError(ValueError):
    """Raised for any input the SIP codec cannot accept."""


class SipRenderError(ValueError):
    """Raised for a value that cannot be put on the wire (a CR or LF in it)."""
