"""The lock files still satisfy pyproject.toml, so they cannot go stale silently.

``requirements/dev.txt`` (./dev, the tests) and ``requirements/runtime.txt``
(the container image) are generated from ``pyproject.toml`` by
``scripts/lock``; ``scripts/install-python`` installs from them and nothing
else. A dependency added or narrowed in pyproject.toml without regenerating
the lock fails here, naming it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def pins(lock: str) -> dict[str, str]:
    text = (ROOT / "requirements" / lock).read_text()
    return {canonicalize_name(name): version for name, version in _PIN.findall(text)}


def unsatisfied(requirements: list[str], locked: dict[str, str]) -> list[str]:
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = locked.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: the lock has {version}")
    return problems


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("runtime.txt", PROJECT["dependencies"]),
        ("dev.txt", PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]),
    ],
)
def test_lock_satisfies_pyproject(lock: str, requirements: list[str]) -> None:
    problems = unsatisfied(requirements, pins(lock))
    assert not problems, f"regenerate requirements/ with scripts/lock: {problems}"


def test_runtime_and_dev_locks_pin_the_same_versions() -> None:
    runtime, dev = pins("runtime.txt"), pins("dev.txt")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_every_pin_carries_hashes() -> None:
    for lock in ("runtime.txt", "dev.txt"):
        text = (ROOT / "requirements" / lock).read_text()
        entries = [e for e in re.split(r"\n(?=[A-Za-z0-9])", text) if _PIN.match(e)]
        assert entries
        assert all("--hash=sha256:" in entry for entry in entries), lock
