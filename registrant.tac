# -*- mode: python -*-
"""
Run uacregistrant from a TOML file:

    UACREG_CONFIG=/etc/uacregistrant.toml twistd -ny registrant.tac

The file holds the same keys as the command-line options, seed spelling
(db_url, hash_size, timer_interval, listen = ["udp:..."], ...);
UACREG_DB_URL in the environment overrides its db_url.
"""

import os
import sys

from twisted.application import service

from uacregistrant.app.service import build_service
from uacregistrant.app.settings import ConfigError, build_settings, environment_values, load_toml

config = os.environ.get("UACREG_CONFIG", "uacregistrant.toml")
try:
    # The environment (UACREG_DB_URL) overrides the file, as for the plugin.
    settings = build_settings({**(load_toml(config) if os.path.exists(config) else {}), **environment_values(os.environ)})
    registrant = build_service(settings)
except ConfigError as e:
    # One line and a non-zero exit, as the plugin does (no traceback).
    print(f"uacregistrant: cannot start: {e}", file=sys.stderr)
    raise SystemExit(1) from None
if settings.log_format == "json":
    # twistd has chosen the log before reading this file: JSON comes from its --logger.
    print("uacregistrant: log_format applies to 'twistd uacregistrant'; with a .tac file use "
          "twistd --logger=uacregistrant.app.logs.json_observer", file=sys.stderr)
application = service.Application("uacregistrant")
registrant.setServiceParent(application)
