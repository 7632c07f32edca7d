# -*- test-case-name: tests.unit.control.test_control,tests.unit.control.test_mi -*-
"""
How records look in C{reg_list}: a dict for JSON, a block for text.

Nothing kept process-wide: a listing that wants its times formatted once
per second (many records are sent or due in the same second) makes an
L{IsoSeconds} for itself and passes it as C{times=}.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Iterable, Iterator

from uacregistrant.core.registrant import Registrant
from uacregistrant.sip.sharing import Memo


def iso_time(seconds: float | None) -> str | None:
    """ISO 8601 UTC with seconds, or C{None} for never."""
    if seconds is None:
        return None
    return _iso_second(int(seconds))


def _iso_second(second: int) -> str:
    moment = datetime.datetime.fromtimestamp(second, datetime.timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


class IsoSeconds:
    """
    L{iso_time} remembering its text per whole second (pure memoization),
    for one listing; bounded: past C{limit} seconds, the rest are
    formatted each time.
    """

    __slots__ = ("_texts",)

    def __init__(self, limit: int = 4096) -> None:
        self._texts: Memo[int, str] = Memo(limit)

    def __call__(self, seconds: float | None) -> str | None:
        """ISO 8601 UTC with seconds, or C{None} for never."""
        if seconds is None:
            return None
        second = int(seconds)
        text = self._texts.get(second)
        if text is None:
            text = self._texts.keep(second, _iso_second(second))
        return text


def record_dict(registrant: Registrant, *, times: IsoSeconds | None = None) -> dict[str, Any]:
    """
    One record for C{reg_list json}; never includes the password.

    @param times: the listing's L{IsoSeconds}, if it keeps one.
    """
    iso = times if times is not None else iso_time
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
        "last_register_sent": iso(registrant.last_register_sent),
        # next_at 0 means "as soon as possible": no deadline to show.
        "registration_t_out": iso(registrant.next_at) if registrant.next_at else None,
        "last_reply": f"{reply[0]} {reply[1]}".rstrip() if reply else None,
        "last_error": registrant.last_error or None,
        "call_id": registrant.call_id,
    }
    if registrant.target:
        transport, _, target = registrant.target.partition(":")
        record["transport"] = transport
        record["target"] = target
    optional = {
        "binding_params": account.binding_params,
        "third_party_registrant": account.third_party_registrant,
        "proxy": account.proxy,
        "socket": account.forced_socket,
        "username": account.username,
    }
    record.update({k: v for k, v in optional.items() if v})
    return record


def json_records(registrants: Iterable[Registrant]) -> Iterator[str]:
    """
    C{{"Records": [...]}} (C{reg_list json}'s body, and the MI's
    C{reg_list} result) in compact JSON, a record per chunk, so that a
    large listing can be written a slice at a time.
    """
    yield '{"Records":['
    separator = ""
    times = IsoSeconds()  # many records were sent or are due in the same second
    for registrant in registrants:
        yield separator + json.dumps(record_dict(registrant, times=times), separators=(",", ":"))
        separator = ","
    yield "]}"


def record_text(registrant: Registrant, *, times: IsoSeconds | None = None) -> list[str]:
    """One record for plain C{reg_list}: a header line, indented fields (C{times} as for L{record_dict})."""
    fields = record_dict(registrant, times=times)
    lines = [f"AOR: {fields.pop('AOR')}"]
    for name, value in fields.items():
        if value is not None:
            lines.append(f"    {name}: {value}")
    return lines
