"""Test peers shipped with the package (the digest-checking test registrar)."""
