"""The codec's own error type."""


class SipParseError(ValueError):
    """Raised for any input the SIP codec cannot accept."""
