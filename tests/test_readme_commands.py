"""Every command README.md's "Other commands" table names answers `--help`, without an engine.

The commands are read from the table, so the test follows the README. They run in one child
process (as `python -m` runs them, through runpy), so vLLM and torch are imported once; an
engine started there, in-process or through vLLM's engine core, fails the command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALWAYS = ("training.train_ppo", "training.evaluate")
"""The two commands of the front page, checked even if the table leaves them out."""

RUNNER = """
import contextlib, io, json, runpy, sys

from vllm.v1.engine.core import EngineCore

from serving.live_engine import LiveEngine


def refuse(*args, **kwargs):
    raise AssertionError("--help started an engine")


LiveEngine.__init__ = EngineCore.__init__ = refuse
results = {}
for command in json.loads(sys.argv[1]):
    sys.argv = [command[0], *command[1:], "--help"]
    out = io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(command[0], run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        code = exit.code
    except BaseException as err:
        code = repr(err)
    results[" ".join(command)] = {"code": code, "usage": "usage:" in out.getvalue()}
print(json.dumps(results))
"""


def readme_commands() -> list[list[str]]:
    """The `python -m MODULE ARGS` of each row of the "Other commands" table, `...` dropped."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Other commands"))
    rows = []
    for line in lines[start + 1 :]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|"):
            rows.append(line)
    commands = []
    for row in rows[2:]:  # after the header and the |---| line
        first_cell = row.split("|")[1]
        text = re.search(r"`(python -m [^`]+)`", first_cell)
        assert text, f"a row of the README's command table names no `python -m` command: {row}"
        words = [w for w in shlex.split(text.group(1)) if w != "..."]
        commands.append(words[2:])
    return commands


def test_every_readme_command_answers_help_without_starting_an_engine():
    commands = readme_commands()
    assert len(commands) >= 8, commands
    modules = {command[0] for command in commands}
    commands += [[module] for module in ALWAYS if module not in modules]
    env = os.environ | {"VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(commands)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert len(results) == len(commands)
    for command, result in results.items():
        assert result == {"code": 0, "usage": True}, f"python -m {command} --help: {result}"
