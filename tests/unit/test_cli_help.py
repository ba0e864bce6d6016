"""``autostep --help`` and every command's help read as plain text, without reStructuredText."""

from __future__ import annotations

import re

import pytest

from autostep.cli import main

COMMANDS = [
    [],
    ["db"],
    ["db", "upgrade"],
    ["relay"],
    ["functions"],
    ["functions", "run"],
    ["gateway"],
    ["gateway", "run"],
    ["gateway", "rpc"],
    ["project"],
    ["project", "create"],
    ["workflow"],
    ["workflow", "publish"],
    ["run"],
    ["run", "start"],
    ["run", "status"],
    ["trigger"],
    ["trigger", "create"],
    ["trigger", "update"],
    ["fire"],
    ["dev"],
]

#: ``literal``, :role:`target` or `text`: markup a terminal shows as noise.
RST = re.compile(r"``|:[a-z]+:`|`[^`]+`")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: " ".join(command) or "autostep")
def test_help_has_no_restructuredtext_markup(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    shown = capsys.readouterr().out

    assert exited.value.code == 0
    assert shown.startswith("usage: autostep")
    assert RST.search(shown) is None, shown


def test_the_description_keeps_its_words_without_the_markup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "The autostep command line: the composition root" in capsys.readouterr().out
