# -*- test-case-name: tests.unit.test_settings -*-
"""
The daemon's settings: one typed, immutable object built from defaults,
then a TOML file, then command-line options, and validated once.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

from .sockets import SocketSpec, SocketSpecError, parse_socket
from .store import COLUMNS, TableLayout


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
    control: tuple[str, ...] = ("unix:uacregistrant.ctl:mode=600",)
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
}
#: name -> default; on the command line as --no-NAME.
FLAGS: dict[str, bool] = {"db_notify": True, "unregister_on_shutdown": True}
LISTS = ("listen", "control")


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config file; keys are folded to lower case."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML in {path}: {e}") from None
    return {str(k).lower(): v for k, v in data.items()}


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
    if not 0 <= hash_size <= 20:
        raise ConfigError(f"hash_size must be between 0 and 20, not {hash_size}")
    if timer_interval < 1:
        raise ConfigError(f"timer_interval must be at least 1 second, not {timer_interval}")
    if timer_interval < (1 << hash_size):
        raise ConfigError(
            f"timer_interval={timer_interval} must be at least 2^hash_size={1 << hash_size} "
            "(one bucket per second at most)"
        )
    if not 1 <= scalars["sip_t1"] <= 10000:
        raise ConfigError(f"sip_t1 must be between 1 and 10000 ms, not {scalars['sip_t1']}")
    if scalars["default_expires"] < 1:
        raise ConfigError(f"default_expires must be positive, not {scalars['default_expires']}")
    if not scalars["send_rate"] > 0:
        raise ConfigError(f"send_rate must be positive, not {scalars['send_rate']}")
    if not scalars["retry_interval"] > 0:
        raise ConfigError(f"retry_interval must be positive, not {scalars['retry_interval']}")
    if scalars["retry_max_interval"] < scalars["retry_interval"]:
        raise ConfigError("retry_max_interval must not be less than retry_interval")
    if scalars["max_in_flight"] < 1:
        raise ConfigError(f"max_in_flight must be at least 1, not {scalars['max_in_flight']}")
    if scalars["db_poll"] < 0:
        raise ConfigError(f"db_poll must be 0 (off) or a positive number of seconds, not {scalars['db_poll']}")
    if not 0 <= scalars["shutdown_timeout"] <= 3600:
        raise ConfigError(f"shutdown_timeout must be between 0 and 3600 seconds, not {scalars['shutdown_timeout']}")
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
    listen = _listen(_as_list(values.get("listen"), "listen") or ["udp:0.0.0.0:5060"])
    control = tuple(
        secure_control_endpoint(e) for e in (_as_list(values.get("control"), "control") or ["unix:uacregistrant.ctl"])
    )
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
        **flags,
    )


def _coerce(name: str, kind: type, value: Any) -> Any:
    if isinstance(value, bool) or (kind is str and not isinstance(value, str)):
        raise ConfigError(f"invalid {name} {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid {name} {value!r}: expected {kind.__name__}") from None


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
    Make a control endpoint safe by default: UNIX sockets get mode 0600
    unless a mode is given; TCP listens on 127.0.0.1 unless an interface is
    given, and a non-loopback interface is refused.
    """
    kind, _, rest = description.partition(":")
    kind = kind.lower()
    if kind == "unix":
        if not rest:
            raise ConfigError(f"control endpoint {description!r} lacks a path")
        return description if ":mode=" in description else f"{description}:mode=600"
    if kind in ("tcp", "tcp6"):
        parts = rest.split(":")
        interface = next((p.partition("=")[2] for p in parts if p.startswith("interface=")), None)
        if interface is None:
            loopback_interface = "\\:\\:1" if kind == "tcp6" else "127.0.0.1"
            return f"{description}:interface={loopback_interface}"
        try:
            loopback = ipaddress.ip_address(interface.replace("\\", "")).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(f"control endpoint {description!r} must listen on a loopback interface")
        return description
    raise ConfigError(f"control endpoint {description!r} must be unix:PATH or tcp:PORT")
