"""uacregistrant: keeps SIP accounts registered at remote registrars."""

__version__ = "0.1.0"
