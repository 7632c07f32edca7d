"""The C{twistd uacregistrant} plugin."""

from twisted.application.service import ServiceMaker

uacregistrant = ServiceMaker(
    "uacregistrant",
    "uacregistrant.app.tap",
    "Keep SIP accounts from a database table registered at their registrars.",
    "uacregistrant",
)
