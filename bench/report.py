"""Text output of the benchmark: sections and aligned rows, and small statistics."""

from __future__ import annotations

import statistics

__all__ = ["median", "pct", "row", "say", "section", "verdict"]


def say(text: str = "") -> None:
    print(text, flush=True)


def section(title: str) -> None:
    say()
    say(f"== {title} " + "=" * max(0, 76 - len(title)))


def row(label: str, value: str, note: str = "") -> None:
    """``label ....... value  note``, values right-aligned in one column."""
    say(f"  {label:<50} {value:>16}  {note}".rstrip())


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: list[float], percent: int) -> float:
    """The ``percent``-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]
