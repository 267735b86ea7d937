"""Configs are frozen, keyword-only dataclasses; presets are named functions that return them.

`select(presets, name)` picks a preset by name, `override(cfg, ["field=value", ...])` changes existing
fields only, converting each value to the field's declared type, and `describe(cfg)` prints the
resolved config in full.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, TypeVar

from .cli import UserError

C = TypeVar("C")


def select(presets: Mapping[str, Callable[[], C]], name: str) -> C:
    if name not in presets:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(sorted(presets))}")
    return presets[name]()


def _convert(name: str, text: str, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if text.lower() in ("none", "null") and len(options) < len(typing.get_args(kind)):
            return None
        for option in options:
            try:
                return _convert(name, text, option)
            except UserError:
                continue
        raise UserError(f"{name}={text!r}: expected {kind}")
    if origin is typing.Literal:
        choices = typing.get_args(kind)
        for choice in choices:
            if str(choice) == text:
                return choice
        raise UserError(f"{name}={text!r}: choose one of {', '.join(map(str, choices))}")
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{name}={text!r}: expected true or false")
    if kind in (int, float, str):
        try:
            return kind(text)
        except ValueError:
            raise UserError(f"{name}={text!r}: expected {kind.__name__}") from None
    raise UserError(f"{name}: cannot be overridden from the command line (type {kind})")


def extend(cls: Callable[..., C], base: Any, **changes: Any) -> C:
    """A config of subclass `cls` with every field of `base` (a preset of its parent class), then `changes`:
    how an open-division preset starts from the closed one."""
    return cls(**(dataclasses.asdict(base) | changes))


def override(cfg: C, assignments: Sequence[str]) -> C:
    """Return `cfg` with `field=value` assignments applied, each type-checked against the field."""
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep:
            raise UserError(f"override {assignment!r} is not of the form field=value")
        if name not in fields:
            raise UserError(f"{type(cfg).__name__} has no field {name!r}: fields are {', '.join(sorted(fields))}")
        changes[name] = _convert(name, text.strip(), hints[name])
    return dataclasses.replace(cfg, **changes)


def describe(cfg: Any, *, hidden: Container[str] = ()) -> str:
    """One `field = value` line per field (less those `hidden`), for printing the resolved config at start-up."""
    rows = [(f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in hidden]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}} = {value!r}" for name, value in rows)
