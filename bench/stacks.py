"""Summarises a py-spy recording made by ``bench/run.py --profile DIR``.

::

    .venv/bin/python bench/stacks.py DIR/B-runner1.txt [--top 40]

Prints where the samples' innermost frames are, by library (sqlalchemy,
psycopg, eventlet, …), then the functions with the most samples anywhere on
the stack (inclusive) and as the innermost frame (self). Line numbers are
dropped so that one function is one entry.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

__all__ = ["summarise"]

_LINE = re.compile(r" \((.*?):\d+\)$")
_PACKAGE = re.compile(r"\(([^/)]+)/")


def summarise(path: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, count_text = line.rsplit(" ", 1)
        count = int(count_text)
        total += count
        frames = [_LINE.sub(r" (\1)", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        innermost[frames[-1]] += count
        package = _PACKAGE.search(frames[-1])
        packages[package.group(1) if package else frames[-1]] += count
    if not total:
        return f"{path}: no samples"
    out = [f"{path}: {total} samples (CPU only unless py-spy ran with --idle)", "", "by library:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in packages.most_common(12)]
    out += ["", "inclusive:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    out += ["", "self:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in innermost.most_common(top // 2)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recording", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    print(summarise(args.recording, args.top))


if __name__ == "__main__":
    main()
