"""Option values checked where they are parsed: argparse ``type=`` functions and a one-line-error parser.

Every numeric or list option of the ``xai-jax`` command uses one of these, so a bad value (negative, zero where
a count is meant, NaN, outside [0, 1], a malformed list) stops the command before it reads any data, with one
line naming the option: ``xai-jax: error: argument --batch-size: must be an integer >= 1, got '0'``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit status 2 (no usage block).

    Sub-parsers made by ``add_subparsers`` are of the same class, so every subcommand behaves alike.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"xai-jax: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def integer(text: str) -> int:
    """Any integer option."""
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer option ``>= low``."""
    def parse(text: str) -> int:
        value = integer(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def int_in(low: int | None, high: int | None) -> Callable[[str], int]:
    """An integer option in ``[low, high]`` (``None``: unbounded on that side)."""
    if high is None:
        return int_at_least(low) if low is not None else integer

    def parse(text: str) -> int:
        value = integer(text)
        if (low is not None and value < low) or value > high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{'-inf' if low is None else low}, {high}], "
                                             f"got {text!r}")
        return value
    parse.__name__ = f"integer in [{low}, {high}]"
    return parse


def int_or_name(text: str) -> int | str:
    """An integer if the text is one (``-2``), else the name itself (a layer given by index or by tap)."""
    stripped = text.strip()
    if not stripped:
        raise argparse.ArgumentTypeError("must be an integer or a name, got ''")
    try:
        return int(stripped)
    except ValueError:
        return stripped


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def number_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
              high_open: bool = False) -> Callable[[str], float]:
    """A finite float option in the interval given (``None``: unbounded on that side)."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    interval = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"

    def parse(text: str) -> float:
        value = _number(text)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must lie in {interval}, got {text!r}")
        return value
    parse.__name__ = f"number in {interval}"
    return parse


probability = number_in(0.0, 1.0)
positive_number = number_in(0.0, None, low_open=True)
non_negative_number = number_in(0.0, None)


def _list(parse_one: Callable[[str], float], kind: str, low: float | None) -> Callable[[str], tuple]:
    """A comma-separated list of ``kind`` parsed by ``parse_one`` (each ``>= low``), at least one."""
    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts) or not all(parts):
            raise argparse.ArgumentTypeError(f"must be comma-separated {kind}, got {text!r}")
        values = tuple(parse_one(p) for p in parts)
        if low is not None and min(values) < low:
            raise argparse.ArgumentTypeError(f"must be comma-separated {kind} >= {low:g}, got {text!r}")
        return values
    parse.__name__ = f"{kind} list"
    return parse


def int_list(low: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """A comma-separated list of integers (each ``>= low``), at least one."""
    return _list(integer, "integers", low)


def number_list(low: float | None = None) -> Callable[[str], tuple[float, ...]]:
    """A comma-separated list of finite numbers (each ``>= low``), at least one."""
    return _list(_number, "numbers", low)


def name_list(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (taps, variants), at least one, none empty."""
    parts = tuple(p.strip() for p in text.split(","))
    if not any(parts) or not all(parts):
        raise argparse.ArgumentTypeError(f"must be comma-separated names, got {text!r}")
    return parts


def choice_list(choices) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list of names, each one of ``choices``."""
    def parse(text: str) -> tuple[str, ...]:
        names = name_list(text)
        bad = [n for n in names if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(bad)} not among {', '.join(choices)}")
        return names
    parse.__name__ = "name list"
    return parse


def index_range(text: str) -> tuple[int, int]:
    """``START:STOP`` with ``0 <= START < STOP`` (a half-open channel range)."""
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be START:STOP (e.g. 0:64), got {text!r}") from None
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"must be START:STOP with 0 <= START < STOP, got {text!r}")
    return start, stop

