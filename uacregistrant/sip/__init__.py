"""The SIP codec: URIs, messages and digest authentication, free of I/O."""
