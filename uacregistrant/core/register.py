# -*- test-case-name: tests.unit.core.test_registrant -*-
"""
The REGISTER on the wire: one attempt of one account rendered as bytes.

Pure: the transaction user supplies the Call-ID, tags, branch and the
address the request is sent from.
"""

from __future__ import annotations

from typing import Final

from uacregistrant import __version__
from uacregistrant.core.account import Account
from uacregistrant.core.registrant import Outgoing
from uacregistrant.sip.message import check_line_count

USER_AGENT: Final = f"uacregistrant/{__version__}"

#: Lines of a REGISTER without its Authorization headers (request line included).
_REGISTER_LINES: Final = 10


def render_register(
    account: Account,
    call_id: str,
    from_tag: str,
    out: Outgoing,
    via: tuple[str, int],
    branch: str,
    user_agent: str = USER_AGENT,
    transport: str = "UDP",
) -> bytes:
    """
    The REGISTER (or un-REGISTER) for one attempt, as bytes.

    @param via: the host and port of the socket it is sent from.
    @param user_agent: the User-Agent header's value; C{""} leaves it out.
    @param transport: the Via transport (C{UDP}, C{TCP} or C{TLS}).
    @raise SipRenderError: if a value would put a CR or LF on the wire
        (rows holding one are refused when loaded; this is the last check).
    """
    host, port = via
    sent_by = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    agent = f"User-Agent: {user_agent}\r\n" if user_agent else ""
    authorization = "".join(f"{name}: {value}\r\n" for name, value in out.authorization)
    # One format string: this runs twice per registration.
    text = (
        f"REGISTER {account.registrar} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {sent_by};rport;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"To: <{account.aor}>\r\n"
        f"From: <{account.third_party_registrant or account.aor}>;tag={from_tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {out.cseq} REGISTER\r\n"
        f"Contact: <{account.binding_uri}>{account.binding_params};expires={out.expires}\r\n"
        f"{authorization}"
        f"{agent}"
        "Content-Length: 0\r\n\r\n"
    )
    check_line_count(text, _REGISTER_LINES + len(out.authorization) - (not user_agent))
    return text.encode("utf-8")
