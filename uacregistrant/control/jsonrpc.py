# -*- test-case-name: tests.unit.control.test_mi -*-
"""
JSON-RPC 2.0 as OpenSIPS's MI speaks it: reading one request (no
batches), checking it, and writing its answer or error, compactly.
Nothing here knows HTTP or the MI's methods.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

# JSON-RPC 2.0's codes, with OpenSIPS's messages.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
SERVER_ERROR = -32000


class RpcError(Exception):
    """A JSON-RPC error: C{code}, C{message} and, when there is more to say, C{data}."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_json(self) -> dict[str, Any]:
        """The error object of a JSON-RPC answer."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data:
            error["data"] = self.data
        return error


def invalid_params(data: str) -> RpcError:
    """C{-32602 Invalid params}, saying what does not match in C{data}."""
    return RpcError(INVALID_PARAMS, "Invalid params", data)


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError("number out of range")
    return number


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes) -> Any:
    """
    The JSON document in C{body}.

    @raise RpcError: C{-32700} for anything that is not JSON (bad UTF-8,
        NaN, numbers out of range, nesting too deep).
    """
    try:
        return json.loads(body.decode("utf-8"), parse_float=_finite_float, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise RpcError(PARSE_ERROR, "Parse error") from None


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool))


@dataclass(frozen=True, slots=True)
class Call:
    """A valid JSON-RPC request: the method, its parameters, its id, and whether it wants an answer."""

    method: str
    params: dict[str, Any] | list[Any]
    id: Any
    notification: bool


def parse_call(document: Any) -> Call:
    """
    Check a JSON-RPC 2.0 request (no batches); C{params} absent, C{{}}
    or C{[]} is no parameters.

    @raise RpcError: C{-32600} (answered with L{request_id}'s id).
    """
    if not isinstance(document, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request", "a JSON-RPC request is one object (no batches)")
    if not _valid_id(document.get("id")):
        raise RpcError(INVALID_REQUEST, "Invalid Request", "id must be a string, a number or null")
    if document.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "Invalid Request", 'jsonrpc must be "2.0"')
    method = document.get("method")
    if not isinstance(method, str):
        raise RpcError(INVALID_REQUEST, "Invalid Request", "method must be a string")
    params = document.get("params", [])
    if not isinstance(params, (dict, list)):
        raise RpcError(INVALID_REQUEST, "Invalid Request", "params must be an object or an array")
    return Call(method, params, document.get("id"), "id" not in document)


def request_id(document: Any) -> Any:
    """The id to answer an invalid request with: its own if usable, else null."""
    if isinstance(document, dict) and _valid_id(document.get("id")):
        return document.get("id")
    return None


def answer(result: Any, request_id: Any) -> bytes:
    """A JSON-RPC success, compact."""
    return json.dumps({"jsonrpc": "2.0", "result": result, "id": request_id}, separators=(",", ":")).encode("ascii")


def error_answer(error: RpcError, request_id: Any) -> bytes:
    """A JSON-RPC error, compact."""
    return json.dumps({"jsonrpc": "2.0", "error": error.as_json(), "id": request_id}, separators=(",", ":")).encode("ascii")


#: What precedes the result of a success written piece by piece (then L{answer_end}).
ANSWER_START = b'{"jsonrpc":"2.0","result":'


def answer_end(request_id: Any) -> str:
    """What follows the result of a success written piece by piece (after L{ANSWER_START})."""
    return ',"id":' + json.dumps(request_id) + "}"
