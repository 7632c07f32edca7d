# -*- test-case-name: tests.unit.test_control -*-
"""How records look in C{reg_list}: a dict for JSON, a block for text."""

from __future__ import annotations

import datetime
import functools
from typing import Any

from uacregistrant.core.registrant import Registrant


def iso_time(seconds: float | None) -> str | None:
    """ISO 8601 UTC with seconds, or C{None} for never."""
    if seconds is None:
        return None
    return _iso_second(int(seconds))


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    # Listings show many records sent or due in the same second.
    moment = datetime.datetime.fromtimestamp(second, datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def record_dict(registrant: Registrant) -> dict[str, Any]:
    """One record for C{reg_list json}; never includes the password."""
    account = registrant.account
    reply = registrant.last_reply
    record: dict[str, Any] = {
        "id": account.row_id,
        "AOR": account.aor,
        "state": registrant.state.name,
        "state_code": int(registrant.state),
        "expires": registrant.expires,
        "enabled": "yes" if account.enabled else "no",
        "registrar": account.registrar,
        "binding": account.binding_uri,
        "last_register_sent": iso_time(registrant.last_register_sent),
        # next_at 0 means "as soon as possible": no deadline to show.
        "registration_t_out": iso_time(registrant.next_at) if registrant.next_at else None,
        "last_reply": f"{reply[0]} {reply[1]}".rstrip() if reply else None,
        "last_error": registrant.last_error or None,
        "call_id": registrant.call_id,
    }
    optional = {
        "binding_params": account.binding_params,
        "third_party_registrant": account.third_party_registrant,
        "proxy": account.proxy,
        "socket": account.forced_socket,
        "username": account.username,
    }
    record.update({k: v for k, v in optional.items() if v})
    return record


def record_text(registrant: Registrant) -> list[str]:
    """One record for plain C{reg_list}: a header line, indented fields."""
    fields = record_dict(registrant)
    lines = [f"AOR: {fields.pop('AOR')}"]
    for name, value in fields.items():
        if value is not None:
            lines.append(f"    {name}: {value}")
    return lines
