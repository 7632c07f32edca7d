"""Unit tests of uacregistrant.core."""
