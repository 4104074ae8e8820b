"""Method configs: frozen dataclasses that are the one source of their defaults, bounds, choices and help.

Every method's hyper-parameters are a frozen dataclass. Its fields carry what a command line, a JSON file or a
validation needs, so that none of them repeats it:

- the type annotation (``int``, ``float``, ``str``, ``bool``, ``tuple[int, ...]``, ``X | None``) and the default;
- :func:`option` metadata: the allowed ``choices``, the bounds ``low``/``high``, the flag's name;
- the help text, from the class docstring's ``Attributes:`` section (Google style).

:mod:`xai_jax.cli.flags` makes the flags from them, :func:`check` validates a config against them,
:func:`to_json`/:func:`from_json` store it in a result. This module imports nothing but the standard library,
so that ``xai-jax --help`` builds every flag without loading JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from typing import Any, Mapping

from xai_jax.errors import XaiJaxError

_META = "xai_jax"


@dataclasses.dataclass(frozen=True)
class Option:
    """What a config field declares beyond its type and default (see :func:`option`)."""

    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    negative: str | None = None
    metavar: str | None = None
    command_line: bool = True


def option(default: Any, *, choices=None, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, flag: str | None = None, aliases=(),
           negative: str | None = None, metavar: str | None = None, command_line: bool = True):
    """A config field with its default and what may be said of its values.

    Args:
      default: the library's default (the command line's too).
      choices: the allowed values (of each item, for a tuple field).
      low, high: bounds of a number (of each item, for a tuple field); ``None``: unbounded.
      low_open, high_open: exclude the bound itself.
      flag: the flag's name when it is not ``--field-name``; ``aliases``: further names it answers to.
      negative: for a ``bool`` field, the one flag that sets it to False (e.g. ``--no-refae``) instead of the
        pair ``--field``/``--no-field``.
      metavar: the flag's value placeholder.
      command_line: ``False`` for fields a command sets itself (never a flag).

    Returns:
      a :func:`dataclasses.field`.
    """
    meta = Option(tuple(choices) if choices is not None else None, low, high, low_open, high_open, flag,
                  tuple(aliases), negative, metavar, command_line)
    return dataclasses.field(default=default, metadata={_META: meta})


def option_of(field: dataclasses.Field) -> Option:
    return field.metadata.get(_META, Option())


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's fields (strings under ``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)


def split_optional(annotation) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) < len(typing.get_args(annotation)):
            return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True
    return annotation, False


def item_type(annotation) -> Any | None:
    """The item type of ``tuple[T, ...]`` or ``tuple[T, T]``; ``None`` for anything else."""
    if typing.get_origin(annotation) is tuple:
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(set(args)) == 1:
            return args[0]
    return None


@functools.lru_cache(maxsize=None)
def attribute_help(cls: type) -> dict[str, str]:
    """``{field: text}`` from the docstring's ``Attributes:`` section; ``a, b: text`` documents both.

    RST markup is reduced to plain text (````x```` -> ``x``, ``:class:`X``` -> ``X``).
    """
    doc = cls.__doc__ or ""
    match = re.search(r"^\s*Attributes:\s*$(.*?)(?=^\s*\w[\w ]*:\s*$|\Z)", doc, re.M | re.S)
    if not match:
        return {}
    lines = match.group(1).splitlines()
    indent = min((len(l) - len(l.lstrip()) for l in lines if l.strip()), default=0)
    entries: list[tuple[list[str], list[str]]] = []
    for line in lines:
        if not line.strip():
            continue
        head = re.match(r"([\w, ]+?):\s(.*)$", line[indent:]) if len(line) - len(line.lstrip()) == indent else None
        if head:
            entries.append(([n.strip() for n in head.group(1).split(",")], [head.group(2).strip()]))
        elif entries:
            entries[-1][1].append(line.strip())
    out = {}
    for names, text in entries:
        plain = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], " ".join(text))
        plain = plain.replace("``", "")
        for name in names:
            out[name] = plain
    return out


def _check_value(name: str, value, annotation, opt: Option) -> None:
    inner, optional = split_optional(annotation)
    if value is None:
        if optional:
            return
        raise XaiJaxError(f"{name} must not be None")
    items = value if item_type(inner) is not None else (value,)
    for item in items:
        if opt.choices is not None and item not in opt.choices:
            raise XaiJaxError(f"{name} must be one of {', '.join(map(str, opt.choices))}; got {item!r}")
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if not math.isfinite(item):
            raise XaiJaxError(f"{name} must be a finite number; got {item}")
        if opt.low is not None and (item <= opt.low if opt.low_open else item < opt.low):
            raise XaiJaxError(f"{name} must be {'>' if opt.low_open else '>='} {opt.low:g}; got {item}")
        if opt.high is not None and (item >= opt.high if opt.high_open else item > opt.high):
            raise XaiJaxError(f"{name} must be {'<' if opt.high_open else '<='} {opt.high:g}; got {item}")


def check(config) -> None:
    """Raises :class:`XaiJaxError` (one line) for the first field outside its declared choices or bounds."""
    types_ = field_types(type(config))
    for field in dataclasses.fields(config):
        _check_value(field.name, getattr(config, field.name), types_[field.name], option_of(field))


def to_json(config) -> dict:
    """The config as a JSON-ready dict (tuples become lists)."""
    def plain(value):
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _from_plain(value, annotation):
    inner, _ = split_optional(annotation)
    if value is None:
        return None
    if typing.get_origin(inner) is tuple:
        if not isinstance(value, (list, tuple)):
            raise XaiJaxError(f"expected a list, got {value!r}")
        item = item_type(inner)
        return tuple(_from_plain(v, item) for v in value)
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_json(cls: type, raw: Mapping[str, Any]):
    """The config a :func:`to_json` dict describes; fields it lacks take their defaults (older results).

    Raises:
      XaiJaxError: for a field the config does not have.
    """
    if not isinstance(raw, Mapping):
        raise XaiJaxError(f"a {cls.__name__} must be a JSON object, got {type(raw).__name__}")
    types_ = field_types(cls)
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        raise XaiJaxError(f"{cls.__name__} has no field {', '.join(unknown)}")
    return cls(**{name: _from_plain(value, types_[name]) for name, value in raw.items()})
