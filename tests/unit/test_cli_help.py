"""``amobridge … --help`` reads like a command's help: options with a metavar (``PORT``) or as a
flag (``--demo/--no-demo``), never the parameter's Python type in angle brackets, and one line of
help for every option — in a narrow terminal and a wide one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from amobridge.cli import app

TYPE_TAG = re.compile(r"<(?:bool|str|int|float|path|file|text|integer|boolean)[^>]*>", re.I)


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_every_command_is_walked() -> None:
    assert ("connections", "list") in COMMANDS
    assert ("serve",) in COMMANDS
    assert () in COMMANDS


@pytest.mark.parametrize("columns", ["40", "80", "200"])
@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "amobridge")
def test_help_has_no_type_tags(path: tuple[str, ...], columns: str) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert not TYPE_TAG.search(result.output), result.output
    assert "Show this message and exit." in result.output


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "amobridge")
def test_every_option_has_one_line_of_help(path: tuple[str, ...]) -> None:
    command: Any = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="amobridge")
    for name in path:
        command = command.commands[name]
        ctx = typer.Context(command, info_name=name, parent=ctx)
    where = " ".join(path) or "amobridge"
    for param in command.get_params(ctx):
        if param.param_type_name != "option":
            continue
        assert param.help, f"{where} {param.opts}: no help"
        assert "\n" not in param.help.strip(), f"{where} {param.opts}: help of several lines"
        if not param.is_flag:
            assert param.metavar, f"{where} {param.opts}: no metavar"


def test_value_options_show_their_metavar() -> None:
    serve = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "100"})
    assert re.search(r"--port PORT\b", serve.output), serve.output
    assert re.search(r"--host HOST\b", serve.output), serve.output
    sandbox = CliRunner().invoke(app, ["sandbox", "--help"], env={"COLUMNS": "100"})
    assert "--demo / --no-demo" in sandbox.output, sandbox.output
