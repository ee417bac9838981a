"""Plain-JSON encoding of ftplan's frozen dataclasses (enums by value, tuples as lists).

Used for the profile store, plan files and reports, so that every record round-trips exactly.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from typing import Any, TypeVar

from catalog.errors import DataError

T = TypeVar("T")
#: Longest reason a decoding error gives, and longest value it quotes: one terminal line.
MAX_REASON_CHARS = 300
_MAX_SHOWN_CHARS = 60


def _shown(data: Any) -> str:
    """``repr(data)``, cut to a few dozen characters (a wrong-typed field may hold a whole
    candidate)."""
    text = repr(data)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[: _MAX_SHOWN_CHARS - 3] + "..."


def to_jsonable(obj: Any) -> Any:
    """Convert a dataclass (recursively) into JSON-ready dicts, lists and scalars."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    return obj


def tagged_json(tag: str, key: str, value: Any, *, indent: int | None = 2) -> str:
    """``{"format": tag, key: value}`` as stable JSON (sorted keys; compact when ``indent`` is
    None): the shape of ftplan's plan files and launch specs."""
    separators = (",", ":") if indent is None else None
    return json.dumps(
        {"format": tag, key: to_jsonable(value)},
        indent=indent,
        sort_keys=True,
        separators=separators,
    )


def from_tagged_json(
    cls: type[T],
    text: str | dict[str, Any],
    *,
    tag: str,
    key: str,
    where: str,
    kind: str,
    fix: str,
) -> T:
    """Read :func:`tagged_json` output (text, or the already-decoded object) into ``cls``.

    Args:
        where: What is read, for messages (e.g. ``plan file 'x.json'``).
        kind: What it should be (e.g. ``plan``).
        fix: How to get a good one (e.g. ``regenerate it with 'ftplan recommend'``).

    Raises:
        DataError: Not JSON (NaN, Infinity and deep nesting refused too), another format, or
            invalid fields; the message names ``where``.
    """
    from catalog._io import loads_json  # deferred: _io's readers build on this module's peers

    data = loads_json(text, what=where) if isinstance(text, str) else text
    if not isinstance(data, dict) or data.get("format") != tag:
        raise DataError(f"{where} is not an ftplan {kind} (expected format {tag!r}); {fix}")
    try:
        return from_jsonable(cls, data.get(key))
    except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
        reason = str(exc)
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        raise DataError(f"{where} is invalid: {reason}; {fix}") from None


def from_jsonable(cls: type[T], data: Any) -> T:
    """Rebuild a dataclass of type ``cls`` from :func:`to_jsonable` output.

    Raises:
        ValueError: If a field is missing, unknown, or holds a value of the wrong kind.
    """
    return typing.cast(T, _decode(cls, data, cls.__name__))


def _decode(tp: Any, data: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # X | None: the error of X itself
            return _decode(options[0], data, where)
        for arg in options:
            try:
                return _decode(arg, data, where)
            except (TypeError, ValueError):
                continue
        names = " or ".join(getattr(arg, "__name__", str(arg)) for arg in options)
        raise ValueError(f"{where}: {_shown(data)} is not a {names}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, list | tuple):
            raise ValueError(f"{where}: expected a list, got {_shown(data)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
        if len(args) != len(data):
            raise ValueError(f"{where}: expected {len(args)} items, got {len(data)}")
        return tuple(
            _decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True))
        )
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {_shown(data)}")
        return {
            _decode(key_tp, k, where): _decode(val_tp, v, f"{where}.{k}") for k, v in data.items()
        }
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {_shown(data)}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{where}: unknown fields {_shown(unknown)}")
        kwargs = {
            name: _decode(hints[name], data[name], f"{where}.{name}")
            for name in fields
            if name in data
        }
        try:
            return tp(**kwargs)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError as exc:
            allowed = ", ".join(str(m.value) for m in tp)
            raise ValueError(f"{where}: {_shown(data)} is not one of {allowed}") from exc
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise ValueError(f"{where}: expected a number, got {_shown(data)}")
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ValueError(f"{where}: expected an integer, got {_shown(data)}")
        return data
    if tp in (str, bool):
        if not isinstance(data, tp):
            raise ValueError(f"{where}: expected {tp.__name__}, got {_shown(data)}")
        return data
    if tp is Any:
        return data
    raise TypeError(f"{where}: cannot decode type {tp!r}")
