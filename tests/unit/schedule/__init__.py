"""Unit tests of uacregistrant.schedule."""
