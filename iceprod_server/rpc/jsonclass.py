"""JSON encoding with the ``__jsonclass__`` convention of IceProd 2 and jsonrpclib.

Values that JSON lacks travel as ``{"__jsonclass__": [name, value]}``: ``datetime`` and
``date`` in ISO 8601, ``bytes`` in base64.
"""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

from iceprod_server.rpc.values import finite_copy


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime.datetime):
        return {"__jsonclass__": ["datetime", obj.isoformat()]}
    if isinstance(obj, datetime.date):
        return {"__jsonclass__": ["date", obj.isoformat()]}
    if isinstance(obj, bytes | bytearray):
        return {"__jsonclass__": ["bytes", base64.b64encode(bytes(obj)).decode()]}
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def _hook(obj: dict[str, Any]) -> Any:
    cls = obj.get("__jsonclass__")
    if cls is None or len(obj) != 1 or not isinstance(cls, list) or len(cls) != 2:
        return obj
    name, value = cls
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # jsonrpclib's form: [name, [args]]
    try:
        if name == "datetime":
            return datetime.datetime.fromisoformat(value)
        if name == "date":
            return datetime.date.fromisoformat(value)
        if name == "bytes":
            return base64.b64decode(value, validate=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad __jsonclass__ {name!r} value: {e}") from e
    return obj


def dumps(obj: Any) -> str:
    """JSON text of ``obj``; a non-finite number (stored before input was checked for
    them) is written as null rather than failing the whole reply."""
    try:
        return _ENCODER.encode(obj)
    except ValueError:
        return _ENCODER.encode(finite_copy(obj))


def loads(text: str | bytes) -> Any:
    if isinstance(text, bytes | bytearray):
        return json.loads(text, object_hook=_hook, parse_constant=_reject_constant)
    return _DECODER.decode(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# made once: json.dumps and json.loads with options build a new coder on every call
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder(object_hook=_hook, parse_constant=_reject_constant)
