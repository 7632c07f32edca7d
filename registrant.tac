# -*- mode: python -*-
"""
Run uacregistrant from a TOML file:

    UACREG_CONFIG=/etc/uacregistrant.toml twistd -ny registrant.tac

The file holds the same keys as the command-line options, seed spelling
(db_url, hash_size, timer_interval, listen = ["udp:..."], ...).
"""

import os

from twisted.application import service

from uacregistrant.service import build_service
from uacregistrant.settings import build_settings, load_toml

config = os.environ.get("UACREG_CONFIG", "uacregistrant.toml")
settings = build_settings(load_toml(config) if os.path.exists(config) else {})
application = service.Application("uacregistrant")
build_service(settings).setServiceParent(application)
