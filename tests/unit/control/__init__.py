"""Unit tests of uacregistrant.control."""
