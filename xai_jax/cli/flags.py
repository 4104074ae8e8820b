"""A method config's flags, made from the config dataclass, and the config made back from the parsed flags.

Names, types, defaults, choices, bounds and help all come from the dataclass (see :mod:`xai_jax.config`), so the
command line cannot drift from the library: ``--k`` of ``xai-jax nma`` is ``NMAConfig.k``, with its default and
its docstring. The value parsers are those of :mod:`xai_jax.cli.options`, so a bad value stops the command with
one line naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Callable, Iterable

from xai_jax import config as C
from xai_jax.cli import options


def flag_name(field: dataclasses.Field) -> str:
    return C.option_of(field).flag or "--" + field.name.replace("_", "-")


def dest_of(field: dataclasses.Field) -> str:
    """Where the parsed value lands: the field's name, or the flag's when it has its own (``--train-batch-size``
    for a ``batch_size`` that would clash with the command's own ``--batch-size``)."""
    flag = C.option_of(field).flag
    return flag[2:].replace("-", "_") if flag else field.name


def _number_parser(kind, opt: C.Option) -> Callable[[str], Any]:
    if kind is float:
        return options.number_in(opt.low, opt.high, low_open=opt.low_open, high_open=opt.high_open)
    if opt.low is None and opt.high is None:
        return options.integer
    low = None if opt.low is None else int(opt.low) + int(opt.low_open)
    high = None if opt.high is None else int(opt.high) - int(opt.high_open)
    return options.int_in(low, high)


def _parser(annotation, opt: C.Option) -> tuple[Callable[[str], Any] | None, str | None]:
    """``(type=, metavar=)`` of a field's flag."""
    inner, _ = C.split_optional(annotation)
    if inner is str:
        return None, None
    if inner in (int, float):
        return _number_parser(inner, opt), None
    if set(typing.get_args(inner)) == {int, str}:
        return options.int_or_name, None
    if typing.get_origin(inner) is tuple:
        item = C.item_type(inner)
        if Ellipsis not in typing.get_args(inner) and typing.get_args(inner) == (int, int):
            return options.index_range, "START:STOP"
        if item is str:
            return (options.name_list if opt.choices is None else options.choice_list(opt.choices)), "A,B,..."
        if item is int:
            return options.int_list(None if opt.low is None else int(opt.low)), "N,N,..."
        if item is float:
            return options.number_list(opt.low), "X,X,..."
    raise TypeError(f"no flag for a config field of type {annotation}")


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, only: Iterable[str] | None = None,
                     skip: Iterable[str] = (), required: Iterable[str] = ()) -> list[str]:
    """Adds a flag for each command-line field of the config class ``cls`` to ``parser``.

    Args:
      parser: the (sub)command's parser.
      cls: a config dataclass whose fields use :func:`xai_jax.config.option`.
      only: add just these fields (default: every field not marked ``command_line=False``).
      skip: fields the command sets itself.
      required: fields whose flag must be given (the library's default does not suit the command).

    Returns:
      the names of the fields that got a flag (pass them to :func:`config_from_args`).
    """
    types_ = C.field_types(cls)
    helps = C.attribute_help(cls)
    wanted = None if only is None else set(only)
    skip, required = set(skip), set(required)
    added = []
    for field in dataclasses.fields(cls):
        opt = C.option_of(field)
        if field.name in skip or (wanted is None and not opt.command_line) or (
                wanted is not None and field.name not in wanted):
            continue
        text = helps.get(field.name)
        if text is None:
            raise TypeError(f"{cls.__name__}.{field.name} is not documented in the class docstring")
        annotation = types_[field.name]
        names = [flag_name(field), *opt.aliases]
        if annotation is bool or C.split_optional(annotation)[0] is bool:
            if opt.negative:
                parser.add_argument(opt.negative, dest=dest_of(field), action="store_false", default=field.default,
                                    help=text)
            else:
                parser.add_argument(*names, dest=dest_of(field), action=argparse.BooleanOptionalAction,
                                    default=field.default, help=f"{text} (default: {field.default})")
            added.append(field.name)
            continue
        parse, metavar = _parser(annotation, opt)
        default = field.default
        shown = "" if field.name in required else (
            f" (default: {_shown(default)})" if default is not None else "")
        kwargs = dict(dest=dest_of(field), help=text + shown, metavar=opt.metavar or metavar)
        if field.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if parse is not None:
            kwargs["type"] = parse
        if opt.choices is not None and C.item_type(C.split_optional(annotation)[0]) is None:
            kwargs["choices"] = opt.choices
            kwargs.pop("metavar")
        parser.add_argument(*names, **kwargs)
        added.append(field.name)
    return added


def config_from_args(cls: type, args: argparse.Namespace, fields: Iterable[str] | None = None, **overrides):
    """The config the parsed flags describe: the flagged ``fields`` (default: every field ``args`` has), then
    ``overrides``; the rest keep the library's defaults."""
    chosen = None if fields is None else set(fields)
    values = {f.name: getattr(args, dest_of(f)) for f in dataclasses.fields(cls)
              if (chosen is None or f.name in chosen) and hasattr(args, dest_of(f))}
    values.update(overrides)
    return cls(**values)


def to_argv(config, fields: Iterable[str]) -> list[str]:
    """The flags that make ``config`` from the library's defaults (only fields that differ from them): the
    command line of a result, and the inverse of :func:`config_from_args`.

    Raises:
      ValueError: a field is ``None`` where its default is not (no flag says "none").
    """
    types_ = C.field_types(type(config))
    chosen = set(fields)
    argv: list[str] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name not in chosen or value == field.default:
            continue
        opt = C.option_of(field)
        if C.split_optional(types_[field.name])[0] is bool:
            argv.append(opt.negative if opt.negative else (flag_name(field) if value else
                                                           "--no-" + flag_name(field)[2:]))
            continue
        if value is None:
            raise ValueError(f"{field.name} is None, which no flag of {type(config).__name__} can say")
        if typing.get_args(C.split_optional(types_[field.name])[0]) == (int, int):
            text = f"{value[0]}:{value[1]}"
        elif isinstance(value, tuple):
            text = ",".join(repr(v) if isinstance(v, float) else str(v) for v in value)
        else:
            text = repr(value) if isinstance(value, float) else str(value)
        argv += [flag_name(field), text]
    return argv
