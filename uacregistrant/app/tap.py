# -*- test-case-name: tests.unit.app.test_settings -*-
"""
C{twistd uacregistrant}: the options (mirroring the seed's parameters) and
L{makeService}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from uacregistrant.app.settings import COLUMN_SETTINGS, FLAGS, LISTS, SCALARS, ConfigError, Settings, build_settings, load_toml

_DESCRIPTIONS = {
    "db_url": "Database URL: sqlite:PATH (relative or absolute) or postgres://USER@HOST:PORT/DBNAME",
    "table_name": "Table holding the accounts",
    "hash_size": "The registry has 2^hash_size buckets",
    "timer_interval": "Seconds for one walk over all buckets",
    "sip_t1": "SIP T1 in milliseconds (Timer F = 64*T1)",
    "default_expires": "Expiry for rows whose expiry is NULL",
    "send_rate": "Requests sent per second at most (digest answers and 423 retries included)",
    "retry_interval": "First retry delay after a failure (s); doubles per failure",
    "retry_max_interval": "Cap on the retry delay (s)",
    "max_in_flight": "Outstanding REGISTER transactions at most (new ones wait)",
    "db_poll": "Re-read the table every N seconds (0 = off; for SQLite, which has no NOTIFY)",
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
    "mi_http": "Serve OpenSIPS's MI as JSON-RPC over HTTP (POST /MI-ROOT) on tcp:PORT (loopback unless :interface=IP) (empty: off)",
    "mi_root": "URL path of the MI endpoint",
    "control_token_file": "File (mode 0600) with the token TCP control connections must give first (auth TOKEN)",
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
        "Settings may also come from --config FILE (TOML, seed spelling, e.g. hash_size); "
        "command-line options override the file."
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
        ["no-db-notify", None, "Do not install the NOTIFY trigger nor LISTEN (PostgreSQL)"],
        ["no-unregister-on-shutdown", None, "Leave the bindings registered when stopping"],
        ["tls-no-verify", None, "Do not check registrars' TLS certificates (insecure; logged and shown in reg_stats)"],
        ["metrics-per-registrar", None, "Also count records by state per registrar host in /metrics"],
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
        """Control endpoint, unix:PATH or tcp:PORT (repeatable) [default: unix:uacregistrant.ctl:mode=600]"""
        self["control"].append(description)

    def merged(self) -> dict[str, Any]:
        """Defaults are applied later: TOML values, then the options given."""
        values: dict[str, Any] = load_toml(self["config"]) if self["config"] else {}
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


def makeService(options: Options) -> IService:
    """
    Build the service from validated options.  Nothing is opened or bound
    here: the service checks and binds in C{privilegedStartService}.
    """
    from uacregistrant.app.service import build_service

    # twistd's own options (log file, -u/-g), when run by twistd.
    parent = getattr(options, "parent", None)
    return build_service(options.settings, twistd=dict(parent) if parent is not None else None)
