"""Unit tests of uacregistrant.net."""
