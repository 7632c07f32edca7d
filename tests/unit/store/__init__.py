"""Unit tests of uacregistrant.store."""
