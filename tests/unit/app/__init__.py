"""Unit tests of uacregistrant.app."""
