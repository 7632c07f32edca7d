"""Unit tests of uacregistrant.agent."""
