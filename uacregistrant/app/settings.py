# -*- test-case-name: tests.unit.app.test_settings,tests.unit.app.test_preflight,tests.unit.app.test_secrets -*-
"""
The daemon's settings: one typed, immutable object built from defaults,
then a TOML file, then the environment (L{ENVIRONMENT}), then
command-line options, and validated once.

Secrets stay out of argv: the database password belongs in libpq's
C{PGPASSFILE} or C{~/.pgpass} (or C{UACREG_DB_URL}, or a config file no
other user can read), the control token in a file of mode 0600.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import parse_qs, urlsplit

from uacregistrant.control.endpoints import ControlEndpoint, ControlEndpointError, parse_control, parse_http
from uacregistrant.core.register import USER_AGENT
from uacregistrant.core.socketspec import SocketSpec, SocketSpecError, parse_socket
from uacregistrant.sip.numbers import is_digits
from uacregistrant.store import COLUMNS, TableLayout


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line for the operator."""


#: Column options, in the seed's spelling (TOML key = name + "_column").
COLUMN_SETTINGS = tuple(name for name in COLUMNS if name not in ("id", "cluster_shtag"))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service needs to know, validated."""

    db_url: str = "sqlite:registrant.db"
    table: TableLayout = field(default_factory=TableLayout)
    hash_size: int = 1
    timer_interval: int = 100
    listen: tuple[SocketSpec, ...] = (SocketSpec("0.0.0.0", 5060),)
    control: tuple[ControlEndpoint, ...] = (ControlEndpoint("unix", path="uacregistrant.ctl"),)
    sip_t1: int = 500
    default_expires: int = 3600
    send_rate: float = 1000.0
    retry_interval: float = 30.0
    retry_max_interval: float = 1800.0
    max_in_flight: int = 1000
    db_poll: float = 0.0
    db_notify: bool = True
    shutdown_timeout: float = 5.0
    unregister_on_shutdown: bool = True
    #: The DNS servers to ask; none: the system's (resolv.conf).
    nameservers: tuple[tuple[str, int], ...] = ()
    #: Seconds between keep-alive pings on TCP/TLS connections (0: none).
    keepalive: int = 30
    #: The User-Agent header of every request ("": none).
    user_agent: str = USER_AGENT
    #: TLS: trusted CAs (PEM; C{None}: the system's store), our certificate and key.
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    #: TLS without checking the registrar's certificate (logged, shown in reg_stats).
    tls_no_verify: bool = False
    #: The cluster this node belongs to ("": none, a single node).
    cluster: str = ""
    #: This node's name in the cluster ("": host name and first listen port).
    node_name: str = ""
    #: Seconds a node's lease lasts (renewed every third of it).
    cluster_lease: float = 10.0
    #: Where Prometheus scrapes /metrics (and /healthz); C{None}: nowhere.
    metrics: ControlEndpoint | None = None
    #: Count records by state per registrar host too (bounded: the table's hosts).
    metrics_per_registrar: bool = False
    #: Where OpenSIPS's MI clients POST JSON-RPC (C{/mi_root}); C{None}: nowhere.
    mi_http: ControlEndpoint | None = None
    mi_root: str = "mi"
    #: Let the MI change records (enable, disable, upsert, delete, reload,
    #: force_register): it has no authentication, as OpenSIPS's mi_http.
    mi_http_writes: bool = False
    #: File holding the token a TCP control connection must give first ("": none).
    control_token_file: str = ""
    #: The log's form: twistd's C{text}, or C{json} (one object per line).
    log_format: str = "text"

    @property
    def stream_listen(self) -> tuple[SocketSpec, ...]:
        """The TCP and TLS listen sockets."""
        return tuple(spec for spec in self.listen if spec.stream)

    @property
    def bucket_interval(self) -> float:
        """Seconds between two bucket visits."""
        return self.timer_interval / (1 << self.hash_size)


# name -> (type, default); the names are the TOML keys, options use dashes.
SCALARS: dict[str, tuple[type, Any]] = {
    "db_url": (str, "sqlite:registrant.db"),
    "table_name": (str, "registrant"),
    "hash_size": (int, 1),
    "timer_interval": (int, 100),
    "sip_t1": (int, 500),
    "default_expires": (int, 3600),
    "send_rate": (float, 1000.0),
    "retry_interval": (float, 30.0),
    "retry_max_interval": (float, 1800.0),
    "max_in_flight": (int, 1000),
    "db_poll": (float, 0.0),
    "shutdown_timeout": (float, 5.0),
    "keepalive": (int, 30),
    "user_agent": (str, USER_AGENT),
    "tls_ca": (str, ""),
    "tls_cert": (str, ""),
    "tls_key": (str, ""),
    "cluster": (str, ""),
    "node_name": (str, ""),
    "cluster_lease": (float, 10.0),
    "metrics": (str, ""),
    "mi_http": (str, ""),
    "mi_root": (str, "mi"),
    "control_token_file": (str, ""),
    "log_format": (str, "text"),
}
#: name -> (smallest, largest) accepted; C{db_poll} also takes 0 (off).
BOUNDS: dict[str, tuple[float, float]] = {
    "hash_size": (0, 20),
    "timer_interval": (1, 86400),
    "sip_t1": (1, 10000),
    "default_expires": (1, 2**32 - 1),
    "send_rate": (0.1, 1_000_000),
    "retry_interval": (1, 86400),
    "retry_max_interval": (1, 7 * 86400),
    "max_in_flight": (1, 1_000_000),
    "db_poll": (1, 86400),
    "shutdown_timeout": (0, 3600),
    "keepalive": (0, 3600),
    "cluster_lease": (3, 300),
}
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_NAME = re.compile(r"[A-Za-z0-9._:@-]{0,63}")
_MI_ROOT = re.compile(r"[A-Za-z0-9_-]{1,32}")

#: name -> default; on the command line as --no-NAME (default on) or --NAME (default off).
FLAGS: dict[str, bool] = {"db_notify": True, "unregister_on_shutdown": True, "tls_no_verify": False, "metrics_per_registrar": False, "mi_http_writes": False}
LISTS = ("listen", "control", "nameserver")
#: Settings the environment may give (between the TOML file and the command line).
ENVIRONMENT = {"db_url": "UACREG_DB_URL"}


def url_has_password(url: str) -> bool:
    """Whether a database URL holds a password (C{USER:PASSWORD@} or C{?password=})."""
    try:
        parts = urlsplit(url)
        return bool(parts.password) or "password" in {k.lower() for k in parse_qs(parts.query, keep_blank_values=True)}
    except ValueError:  # a URL urllib cannot split: look for USER:PASSWORD@ by hand
        return "@" in url and ":" in url.partition("@")[0].rpartition("/")[2]


def load_toml(path: str) -> dict[str, Any]:
    """
    Read a TOML config file; keys are folded to lower case.  A file holding
    a secret (a password in C{db_url}) must not be readable by every user.
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML in {path}: {e}") from None
    values = {str(k).lower(): v for k, v in data.items()}
    db_url = values.get("db_url")
    if mode & stat.S_IROTH and isinstance(db_url, str) and url_has_password(db_url):
        raise ConfigError(
            f"config file {path} holds a password (db_url) and every user may read it (mode {stat.S_IMODE(mode):04o}): "
            f"chmod o-r {path}, or keep the password in PGPASSFILE or ~/.pgpass"
        )
    return values


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment gives (L{ENVIRONMENT}; empty variables ignored)."""
    return {name: environ[variable] for name, variable in ENVIRONMENT.items() if environ.get(variable)}


def known_keys() -> set[str]:
    """Every key a config file may hold."""
    return set(SCALARS) | set(FLAGS) | set(LISTS) | {f"{name.lower()}_column" for name in COLUMN_SETTINGS}


def build_settings(values: Mapping[str, Any]) -> Settings:
    """
    Validate merged values (TOML spelling, lower-case keys) into L{Settings}.

    @raise ConfigError: naming the first bad value.
    """
    unknown = set(values) - known_keys()
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    scalars = {name: _coerce(name, kind, values.get(name, default)) for name, (kind, default) in SCALARS.items()}
    hash_size = scalars["hash_size"]
    timer_interval = scalars["timer_interval"]
    if timer_interval < (1 << hash_size):
        raise ConfigError(
            f"timer_interval={timer_interval} must be at least 2^hash_size={1 << hash_size} "
            "(one bucket per second at most)"
        )
    if scalars["default_expires"] <= timer_interval:
        raise ConfigError(
            f"default_expires={scalars['default_expires']} must be longer than timer_interval={timer_interval} "
            "(rows with a NULL expiry would all be refused)"
        )
    if scalars["retry_max_interval"] < scalars["retry_interval"]:
        raise ConfigError("retry_max_interval must not be less than retry_interval")
    flags = {}
    for name, default in FLAGS.items():
        value = values.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
        flags[name] = value
    columns = {name: name for name in COLUMNS}
    for name in COLUMN_SETTINGS:
        real = values.get(f"{name.lower()}_column", name)
        if not isinstance(real, str) or not real or '"' in real:
            raise ConfigError(f"invalid {name}_column {real!r}")
        columns[name] = real
    table = scalars["table_name"]
    if not table or '"' in table:
        raise ConfigError(f"invalid table_name {table!r}")
    if not scalars["db_url"].startswith(("sqlite:", "postgres://", "postgresql://")):
        raise ConfigError("unsupported db_url: use sqlite:PATH or postgres://USER@HOST:PORT/DBNAME (the password in PGPASSFILE or ~/.pgpass)")
    listen = _listen(_as_list(values.get("listen"), "listen") or ["udp:0.0.0.0:5060"])
    control = tuple(_control(e) for e in (_as_list(values.get("control"), "control") or ["unix:uacregistrant.ctl"]))
    for endpoint in control:
        if endpoint.kind == "tcp" and not scalars["control_token_file"]:
            raise ConfigError(
                f"control endpoint tcp:{endpoint.port} needs --control-token-file FILE (mode 0600, the token on its first line): "
                "every local user can connect to a TCP port"
            )
    user_agent = scalars["user_agent"]
    if len(user_agent) > 200 or not all(" " <= c <= "~" for c in user_agent):
        raise ConfigError("invalid user_agent: at most 200 printable ASCII characters (\"\" to send none)")
    for name in ("cluster", "node_name"):
        if not _NAME.fullmatch(scalars[name]):
            raise ConfigError(f"invalid {name} {scalars[name][:70]!r}: at most 63 letters, digits and . _ : @ -")
    tls = {name: scalars[name] or None for name in ("tls_ca", "tls_cert", "tls_key")}
    http = {name: _http(scalars[name], what) if scalars[name] else None for name, what in (("metrics", "metrics"), ("mi_http", "MI"))}
    if not _MI_ROOT.fullmatch(scalars["mi_root"]):
        raise ConfigError(f"invalid mi_root {scalars['mi_root'][:40]!r}: letters, digits, _ and - (the URL is /mi_root)")
    mi = http["mi_http"]
    if flags["mi_http_writes"] and (mi is None or not ipaddress.ip_address(mi.interface).is_loopback):
        raise ConfigError(
            "mi_http_writes needs mi_http on a loopback interface (the MI has no authentication: "
            "anyone who reaches it could change the table)"
        )
    if scalars["log_format"] not in ("text", "json"):
        raise ConfigError(f"invalid log_format {scalars['log_format'][:20]!r}: text or json")
    if (tls["tls_cert"] is None) != (tls["tls_key"] is None):
        raise ConfigError("tls_cert and tls_key go together: give both or neither")
    return Settings(
        db_url=scalars["db_url"],
        table=TableLayout(table, columns),
        hash_size=hash_size,
        timer_interval=timer_interval,
        listen=listen,
        control=control,
        sip_t1=scalars["sip_t1"],
        default_expires=scalars["default_expires"],
        send_rate=scalars["send_rate"],
        retry_interval=scalars["retry_interval"],
        retry_max_interval=scalars["retry_max_interval"],
        max_in_flight=scalars["max_in_flight"],
        db_poll=scalars["db_poll"],
        shutdown_timeout=scalars["shutdown_timeout"],
        nameservers=tuple(_nameserver(text) for text in _as_list(values.get("nameserver"), "nameserver") if text),
        keepalive=scalars["keepalive"],
        user_agent=user_agent,
        tls_ca=tls["tls_ca"],
        tls_cert=tls["tls_cert"],
        tls_key=tls["tls_key"],
        db_notify=flags["db_notify"],
        unregister_on_shutdown=flags["unregister_on_shutdown"],
        tls_no_verify=flags["tls_no_verify"],
        cluster=scalars["cluster"],
        node_name=scalars["node_name"],
        cluster_lease=scalars["cluster_lease"],
        metrics=http["metrics"],
        metrics_per_registrar=flags["metrics_per_registrar"],
        mi_http=http["mi_http"],
        mi_root=scalars["mi_root"],
        mi_http_writes=flags["mi_http_writes"],
        control_token_file=scalars["control_token_file"],
        log_format=scalars["log_format"],
    )


def _nameserver(text: str) -> tuple[str, int]:
    """C{IP}, C{IP:PORT} or C{[IPv6]:PORT} (port 53 by default)."""
    host, port_text = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"invalid nameserver {text[:60]!r}: IP, IP:PORT or [IPv6]:PORT")
        port_text = rest[1:] or "53"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"invalid nameserver {text[:60]!r}: IP, IP:PORT or [IPv6]:PORT") from None
    if not is_digits(port_text) or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"invalid nameserver port {port_text[:20]!r}")
    return str(address), int(port_text)


def _coerce(name: str, kind: type, value: Any) -> Any:
    """
    A setting's value as C{kind}: numbers in ASCII digits (a decimal point
    for seconds and rates), finite, within L{BOUNDS}.
    """
    if isinstance(value, bool) or (kind is str and not isinstance(value, str)):
        raise ConfigError(f"invalid {name} {value!r}")
    if kind is str:
        return value
    number: float | int
    if isinstance(value, str):
        text = value.strip()
        if kind is int and is_digits(text):
            number = int(text)
        elif kind is float and _DECIMAL.fullmatch(text) and text.isascii():
            number = float(text)
        else:
            raise ConfigError(f"invalid {name} {value[:40]!r}: {_expected(name, kind)}")
    elif isinstance(value, int) or (isinstance(value, float) and kind is float):
        number = value
    else:
        raise ConfigError(f"invalid {name} {str(value)[:40]!r}: {_expected(name, kind)}")
    low, high = BOUNDS.get(name, (-math.inf, math.inf))
    off = name == "db_poll" and number == 0
    if not math.isfinite(number) or not (low <= number <= high or off):
        raise ConfigError(f"invalid {name} {str(value)[:40]!r}: {_expected(name, kind)}")
    return kind(number)


def _expected(name: str, kind: type) -> str:
    low, high = BOUNDS.get(name, (-math.inf, math.inf))
    what = "a whole number" if kind is int else "a number"
    rule = f"{what} from {low:g} to {high:g}"
    return rule + " (or 0 for off)" if name == "db_poll" else rule


def _as_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{name} must be a string or a list of strings")


def _listen(specs: list[str]) -> tuple[SocketSpec, ...]:
    parsed: list[SocketSpec] = []
    for text in specs:
        try:
            spec = parse_socket(text)
        except SocketSpecError as e:
            raise ConfigError(f"invalid listen {text!r}: {e}") from None
        if spec in parsed:
            raise ConfigError(f"listen {spec.name} given twice")
        parsed.append(spec)
    return tuple(parsed)


def secure_control_endpoint(description: str) -> str:
    """
    Make a control endpoint safe by default (see L{parse_control}); its
    canonical description in Twisted's syntax.

    @raise ConfigError: if it cannot be made safe.
    """
    return _control(description).description


def _http(description: str, what: str) -> ControlEndpoint:
    try:
        return parse_http(description, what)
    except ControlEndpointError as e:
        raise ConfigError(str(e)) from None


def _control(description: str) -> ControlEndpoint:
    try:
        return parse_control(description)
    except ControlEndpointError as e:
        raise ConfigError(str(e)) from None
