"""The method registry: every JSON-RPC method, its roles and its parameter types.

A method is registered with :func:`rpc_method`, which states next to the definition who may
call it. Parameters are bound with :func:`inspect.signature` and checked against the type
annotations before the method runs, so bad params are -32602 and bugs inside a method -32603.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from iceprod_server.errors import InvalidParams
from iceprod_server.rpc import limits, values

# Roles a method may name. PUBLIC: anyone, anonymous included, while ``public_read`` is on
# (an authenticated caller always may). ANYONE: always, anonymous included.
PUBLIC = "public"
ANYONE = "anyone"
PILOT, USER, ADMIN, SITE = "pilot", "user", "admin", "site"
ALL_ROLES = (PILOT, USER, ADMIN, SITE)

# An identifier: a string in every result; a JSON number is accepted and read as its digits.
Id = Annotated[str, "id"]

MethodFunc = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    name: str
    func: MethodFunc
    roles: frozenset[str]
    errors: tuple[int, ...]
    params: tuple[inspect.Parameter, ...]
    hints: dict[str, Any] = field(default_factory=dict)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def doc(self) -> str:
        return inspect.cleandoc(self.func.__doc__ or "")

    def allows(self, role: str | None, public_read: bool) -> bool:
        if ANYONE in self.roles:
            return True
        if PUBLIC in self.roles:
            return role is not None or public_read
        return role is not None and role in self.roles


REGISTRY: dict[str, Method] = {}


@dataclass(frozen=True)
class Iceprod2Form:
    """How IceProd 2.3.2 called the method of this name: its params in their positional
    order (what an ``args`` list binds to), what the call does here, and the 2.3.2 params
    this server refuses, each with the reason given to the caller."""

    params: tuple[str, ...]
    maps_to: str = ""
    refused: Mapping[str, str] = field(default_factory=dict)


# method name -> how IceProd 2.3.2 called it (docs/methods.md, IceProd 2.3.2 clients)
ICEPROD2: dict[str, Iceprod2Form] = {}
# IceProd 2.3.2 method names this server does not serve -> (its params, what replaces it)
NOT_SERVED: dict[str, tuple[tuple[str, ...], str]] = {}


def rpc_method(*roles: str, errors: tuple[int, ...] = (),
               name: str | None = None) -> Callable[[MethodFunc], MethodFunc]:
    """Register an ``async def method(ctx, ...)`` under its name, callable by ``roles``.

    ``errors`` lists the application error codes the method may answer with (for
    ``rpc.discover``).
    """
    for role in roles:
        if role not in (*ALL_ROLES, PUBLIC, ANYONE):
            raise ValueError(f"unknown role {role!r}")

    def register(func: MethodFunc) -> MethodFunc:
        method_name = name or func.__name__
        if method_name in REGISTRY:
            raise ValueError(f"method {method_name!r} registered twice")
        sig = inspect.signature(func)
        params = tuple(sig.parameters.values())[1:]  # the first is the context
        hints = get_type_hints(func, include_extras=True)
        REGISTRY[method_name] = Method(method_name, func, frozenset(roles), tuple(errors),
                                       params, hints)
        return func

    return register


def _positional_args(method: Method, params: dict[str, Any]) -> dict[str, Any]:
    """IceProd 2 clients send named params with the positional ones as a list under
    ``args``: bind that list in IceProd 2.3.2's order of the method's params (the method's
    own order when 2.3.2 had no such method), the rest by name."""
    form = ICEPROD2.get(method.name)
    order = list(form.params) if form else [p.name for p in method.params]
    args = params["args"]
    if not isinstance(args, list):
        problem = f"args: expected an array (the positional params), got {_json_type(args)}"
        raise InvalidParams(f"invalid params for {method.name}: {problem}",
                            {"problems": [problem]})
    if len(args) > len(order):
        problem = (f"args: {method.name} takes at most {len(order)} positional params, "
                   f"got {len(args)}")
        raise InvalidParams(f"invalid params for {method.name}: {problem}",
                            {"problems": [problem], "expected": order})
    named = {k: v for k, v in params.items() if k != "args"}
    clashes = [f"args[{i}] and the named param {name} both give {name}"
               for i, name in enumerate(order[:len(args)]) if name in named]
    if clashes:
        raise InvalidParams(f"invalid params for {method.name}: {'; '.join(clashes)}",
                            {"problems": clashes})
    return {**dict(zip(order, args, strict=False)), **named}


def check_refused_form(name: str, params: list[Any] | dict[str, Any]) -> None:
    """InvalidParams when the call names a param of IceProd 2.3.2's form of the method
    that this server refuses (by name, or through ``args``), whoever the caller is."""
    form = ICEPROD2.get(name)
    if form is None or not form.refused or not isinstance(params, dict):
        return
    given = list(params)
    if isinstance(params.get("args"), list):
        given += form.params[:len(params["args"])]
    for param in given:
        if param in form.refused:
            reason = form.refused[param]
            raise InvalidParams(reason, {"problems": [f"{param}: {reason}"], "param": param})


def bind(method: Method, params: list[Any] | dict[str, Any]) -> dict[str, Any]:
    """Bind JSON-RPC params to ``method``'s parameters, checking names and types."""
    names = [p.name for p in method.params]
    if isinstance(params, dict) and "args" in params and "args" not in names:
        params = _positional_args(method, params)
    if isinstance(params, list):
        if len(params) > len(names):
            raise InvalidParams(f"{method.name} takes at most {len(names)} params, "
                                f"got {len(params)}", {"expected": names})
        given = dict(zip(names, params, strict=False))
    else:
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise InvalidParams(f"unknown params for {method.name}: {', '.join(unknown)}",
                                {"unknown": unknown, "expected": names})
        given = dict(params)
    bound: dict[str, Any] = {}
    problems: list[str] = []
    for p in method.params:
        if p.name not in given:
            if p.default is inspect.Parameter.empty:
                problems.append(f"{p.name}: missing")
            continue
        hint = method.hints.get(p.name, Any)
        try:
            bound[p.name] = check_type(given[p.name], hint, p.name)
        except TypeError as e:
            problems.append(str(e))
            continue
        problems.extend(values.problems(bound[p.name], p.name))
        size = limits.size_problem(method.name, p.name, bound[p.name])
        if size:
            problems.append(size)
    if problems:
        raise InvalidParams(f"invalid params for {method.name}: {'; '.join(problems)}",
                            {"problems": problems})
    return bound


def _type_name(hint: Any) -> str:
    if hint is Any:
        return "any"
    if get_origin(hint) is Annotated:
        return "id" if "id" in get_args(hint)[1:] else _type_name(get_args(hint)[0])
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(hint))
    if hint is type(None):
        return "null"
    names = {str: "string", int: "integer", float: "number", bool: "boolean",
             list: "array", dict: "object"}
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def check_type(value: Any, hint: Any, where: str) -> Any:
    """Return ``value`` (ids normalised to strings) or raise TypeError saying what is wrong."""
    if hint is Any or hint is object:
        return value
    origin = get_origin(hint)
    if origin is Annotated:
        base, *extra = get_args(hint)
        if "id" in extra:
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            if isinstance(value, str) and value:
                return value
            raise TypeError(f"{where}: expected an id (string), got {_json_type(value)}")
        return check_type(value, base, where)
    if origin in (Union, types.UnionType):
        for arg in get_args(hint):
            try:
                return check_type(value, arg, where)
            except TypeError:
                continue
        raise TypeError(f"{where}: expected {_type_name(hint)}, got {_json_type(value)}")
    if hint is type(None):
        if value is None:
            return None
        raise TypeError(f"{where}: expected null, got {_json_type(value)}")
    if origin is typing.Literal:
        if value in get_args(hint):
            return value
        raise TypeError(f"{where}: expected one of {list(get_args(hint))}, got {value!r}")
    base = origin or hint
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        # bytes arrive as {"__jsonclass__": ["bytes", ...]}
        bytes: lambda v: isinstance(v, bytes),
        list: lambda v: isinstance(v, list),
        dict: lambda v: isinstance(v, dict),
    }.get(base)
    if ok is None:
        return value
    if not ok(value):
        raise TypeError(f"{where}: expected {_type_name(hint)}, got {_json_type(value)}")
    if base is list and get_args(hint):
        (item,) = get_args(hint)
        return [check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if base is dict and get_args(hint):
        _, val = get_args(hint)
        return {k: check_type(v, val, f"{where}.{k}") for k, v in value.items()}
    if base is float:
        try:
            return float(value)
        except OverflowError as e:  # an integer beyond the range of a double
            raise TypeError(f"{where}: number too large") from e
    return value


def _json_type(value: Any) -> str:
    return _type_name(type(value)) if value is not None else "null"


def json_schema(hint: Any) -> dict[str, Any]:
    """A JSON Schema for a parameter or result annotation (for ``rpc.discover``)."""
    if hint is Any or hint is object or hint is inspect.Parameter.empty:
        return {}
    origin = get_origin(hint)
    if origin is Annotated:
        base, *extra = get_args(hint)
        if "id" in extra:
            return {"type": "string", "description": "identifier"}
        return json_schema(base)
    if origin in (Union, types.UnionType):
        return {"oneOf": [json_schema(a) for a in get_args(hint)]}
    if hint is type(None) or hint is None:
        return {"type": "null"}
    if origin is typing.Literal:
        return {"enum": list(get_args(hint))}
    base = origin or hint
    simple = {str: "string", int: "integer", float: "number", bool: "boolean",
              list: "array", dict: "object"}
    if base not in simple:
        return {}
    schema: dict[str, Any] = {"type": simple[base]}
    if base is list and get_args(hint):
        schema["items"] = json_schema(get_args(hint)[0])
    if base is dict and len(get_args(hint)) == 2:
        schema["additionalProperties"] = json_schema(get_args(hint)[1])
    return schema
