# -*- test-case-name: tests.unit.app.test_settings,tests.unit.app.test_secrets -*-
"""
C{twistd uacregistrant}: the options (mirroring the seed's parameters) and
L{makeService}.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from uacregistrant import __version__
from uacregistrant.app.settings import (
    COLUMN_SETTINGS,
    FLAGS,
    LISTS,
    SCALARS,
    ConfigError,
    Settings,
    build_settings,
    environment_values,
    load_toml,
    url_has_password,
)

_log = Logger(namespace=__name__)

_DESCRIPTIONS = {
    "db_url": (
        "Database URL: sqlite:PATH (relative or absolute) or postgres://USER@HOST:PORT/DBNAME, without the password "
        "(libpq reads it from PGPASSFILE or ~/.pgpass, mode 0600; a password here shows in ps). "
        "Precedence: this option, then $UACREG_DB_URL, then db_url in --config, then the default"
    ),
    "table_name": "Table holding the accounts",
    "hash_size": "The registry has 2^hash_size buckets",
    "timer_interval": "Seconds for one walk over all buckets",
    "sip_t1": "SIP T1 in milliseconds (Timer F = 64*T1)",
    "default_expires": "Expiry for rows whose expiry is NULL",
    "send_rate": "Requests sent per second at most (digest answers and 423 retries included)",
    "retry_interval": "First retry delay after a failure (s); doubles per failure",
    "retry_max_interval": "Cap on the retry delay (s)",
    "max_in_flight": "Outstanding REGISTER transactions at most (new ones wait)",
    "db_poll": (
        "Re-read the table every N seconds (0 = off; for SQLite, which has no NOTIFY; PostgreSQL falls back "
        "to 30 s when its role may not install the NOTIFY trigger)"
    ),
    "shutdown_timeout": "Seconds to wait for un-REGISTERs at shutdown",
    "keepalive": "Seconds between CRLF keep-alive pings on TCP/TLS connections (0 = none)",
    "user_agent": "User-Agent header of every request (empty: none)",
    "tls_ca": "PEM file of the CAs trusted for registrars' TLS certificates (empty: the system's store)",
    "tls_cert": "PEM certificate presented over TLS (client certificate; serves tls: listen sockets)",
    "tls_key": "PEM private key of --tls-cert",
    "cluster": "Run as a node of this cluster (PostgreSQL only): the nodes share the table's records",
    "node_name": "This node's name in the cluster (empty: host name and first listen port)",
    "cluster_lease": "Seconds a node's lease lasts; a dead node's records are taken over within twice this",
    "metrics": "Serve Prometheus /metrics and /healthz on tcp:PORT (loopback unless :interface=IP is given) (empty: off)",
    "mi_http": "Serve OpenSIPS's MI as JSON-RPC over HTTP (POST /MI-ROOT) on tcp:PORT (loopback unless :interface=IP); "
    "read-only (which, reg_list) unless --mi-http-writes (empty: off)",
    "mi_root": "URL path of the MI endpoint",
    "control_token_file": (
        "File (mode 0600, refused otherwise) whose first line (16 characters at least, e.g. openssl rand -hex 32) "
        "is the token a TCP control connection must give first (auth TOKEN); required by --control tcp:"
    ),
    "log_format": "text (twistd's) or json (one object per line)",
}


def _option_name(key: str) -> str:
    return key.lower().replace("_", "-")


class Options(usage.Options):
    """Command-line options; unset ones fall back to the TOML file, then defaults."""

    synopsis = "[options]"
    #: The validated settings, once the options are parsed.
    settings: Settings
    longdesc = (
        "Keeps the SIP accounts of an OpenSIPS-style registrant table registered. "
        "Settings may also come from --config FILE (TOML, seed spelling, e.g. hash_size; a file holding a "
        "password in db_url must not be readable by other users) and the environment (UACREG_DB_URL); "
        "command-line options override both, the environment overrides the file."
    )
    optParameters = [
        [_option_name(key), None, None, f"{_DESCRIPTIONS[key]} [default: {default}]"]
        for key, (_, default) in SCALARS.items()
    ] + [
        [f"{_option_name(name)}-column", None, None, f"Column of {name} [default: {name}]"]
        for name in COLUMN_SETTINGS
    ] + [
        ["config", "c", None, "TOML file with the same settings"],
    ]
    optFlags = [
        [
            "no-db-notify",
            None,
            "Do not install the NOTIFY trigger nor LISTEN (PostgreSQL; a role that may not install it starts anyway, "
            "polling, and logs the SQL file for the DBA: registrant-notify-postgres.sql)",
        ],
        ["no-unregister-on-shutdown", None, "Leave the bindings registered when stopping"],
        ["tls-no-verify", None, "Do not check registrars' TLS certificates (insecure; logged and shown in reg_stats)"],
        ["metrics-per-registrar", None, "Also count records by state per registrar host in /metrics"],
        ["mi-http-writes", None, "Let the MI change records (enable, disable, upsert, delete, reload, force_register); "
         "it has no authentication: every local user can then change the table (loopback --mi-http only)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["control"] = []
        self["nameserver"] = []

    def opt_listen(self, spec: str) -> None:
        """Socket udp:, tcp: or tls:HOST:PORT to send from (repeatable) [default: udp:0.0.0.0:5060]"""
        self["listen"].append(spec)

    def opt_nameserver(self, server: str) -> None:
        """DNS server IP[:PORT] for NAPTR/SRV/A/AAAA lookups (repeatable) [default: the system's, from /etc/resolv.conf]"""
        self["nameserver"].append(server)

    def opt_control(self, description: str) -> None:
        """Control endpoint (repeatable): unix:PATH[:mode=660][:owner=USER][:group=GROUP] (names or ids, given to the socket once bound, so that a group of operators can use it without root), or tcp:PORT on loopback, which needs --control-token-file [default: unix:uacregistrant.ctl:mode=600]"""
        self["control"].append(description)

    def opt_version(self) -> None:
        """Print the version and exit"""
        sys.stdout.write(f"uacregistrant {__version__}\n")
        sys.stdout.flush()
        raise SystemExit(0)

    def merged(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """
        Defaults are applied later: TOML values, then the environment's
        (C{environ}, by default the process's), then the options given.
        """
        values: dict[str, Any] = load_toml(self["config"]) if self["config"] else {}
        values.update(environment_values(os.environ if environ is None else environ))
        for key in SCALARS:
            if self[_option_name(key)] is not None:
                values[key] = self[_option_name(key)]
        for name in COLUMN_SETTINGS:
            option = f"{_option_name(name)}-column"
            if self[option] is not None:
                values[f"{name.lower()}_column"] = self[option]
        for key, default in FLAGS.items():
            if default and self["no-" + _option_name(key)]:
                values[key] = False
            elif not default and self[_option_name(key)]:
                values[key] = True
        for key in LISTS:
            if self[key]:
                values[key] = list(self[key])
        return values

    def postOptions(self) -> None:
        """Validate every setting; a bad one is a usage error naming it."""
        try:
            self.settings = build_settings(self.merged())
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["db-url"] is not None and url_has_password(self["db-url"]):
            # Logged once twistd's log begins (the global log buffers until then).
            _log.warn(
                "--db-url holds a password: every local user sees it in ps; "
                "keep it in PGPASSFILE or ~/.pgpass (or UACREG_DB_URL, or a config file of mode 0600)"
            )


def makeService(options: Options) -> IService:
    """
    Build the service from validated options.  Nothing is opened or bound
    here: the service checks and binds in C{privilegedStartService}.
    """
    from uacregistrant.app.service import build_service

    # twistd's own options (log file, -u/-g), when run by twistd.
    parent = getattr(options, "parent", None)
    return build_service(options.settings, twistd=dict(parent) if parent is not None else None)
