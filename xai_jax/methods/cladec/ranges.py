"""Channel subsets of a layer for :attr:`ClaDecConfig.neurons` (section 6.4)."""

from __future__ import annotations


def nested_ranges(channels: int, sizes) -> list[tuple[int, int]]:
    """Nested channel subsets ``[0, s)`` for each size (fig. 13: smaller subsets inside larger ones)."""
    return [(0, int(s)) for s in sizes if 0 < s <= channels]


def disjoint_ranges(channels: int, size: int, count: int | None = None) -> list[tuple[int, int]]:
    """Disjoint consecutive channel subsets of ``size`` (fig. 14), at most ``count`` of them."""
    ranges = [(s, s + size) for s in range(0, channels - size + 1, size)]
    return ranges[:count] if count else ranges
