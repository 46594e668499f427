"""Command lines from dataclasses: one field a flag, its docstring the help, YAML for defaults.

A config dataclass documents each field with a string literal right below it (an attribute
docstring). `parse_config` reads an optional YAML file (`--config PATH`) over the dataclass
defaults, then the command line over both; unknown keys and values of the wrong type are
errors that name the key, the file and the expected type. `deprecated_alias` keeps an old
option spelling working, with a warning, for one release after a rename.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or flag that does not fit the config dataclass."""


class _DeprecatedAlias(argparse.Action):
    """Stores into the renamed option's destination, after a warning on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"warning: {option_string} is deprecated and will be removed in the next release; "
            f"use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def deprecated_alias(parser: argparse.ArgumentParser, action: argparse.Action, *old: str) -> None:
    """Accept the old spellings `old` of the option `action` (what add_argument returned).

    They set the same value, warn on stderr that they are deprecated, and are left out of
    --help. Kept for one release after a rename.
    """
    for name in old:
        parser.add_argument(
            name,
            dest=action.dest,
            type=action.type,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
            action=_DeprecatedAlias,
            new=action.option_strings[0],
        )


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string right after each field) of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(tree.body[0].body):  # type: ignore[attr-defined]
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """(the inner type, whether None is allowed) of `X | None`."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return kind, False


def coerce(name: str, kind: Any, value: Any, where: str) -> Any:
    """`value` as type `kind`, or ConfigError naming the field and where it came from."""
    inner, optional = _unwrap_optional(kind)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{where}: {name} must not be empty (expected {inner.__name__})")
    if typing.get_origin(inner) is tuple:
        item = typing.get_args(inner)[0]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: {name} expects a list, got {value!r}")
        return tuple(coerce(name, item, v, where) for v in items if v != "")
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif inner is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{name}: unsupported field type {inner!r}")
    raise ConfigError(f"{where}: {name} expects {inner.__name__}, got {value!r}")


def load_yaml(cls: type, path: Path) -> dict[str, Any]:
    """A YAML mapping of field values for `cls`, each checked and converted."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; see --help for the options"
        )
    return {
        key: coerce(key, hints[key], value, f"config file {path}") for key, value in data.items()
    }


def parse_config(cls: type[T], argv: Sequence[str] | None, prog: str, description: str) -> T:
    """Build `cls` from its defaults, then `--config FILE` (YAML), then the command line."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    overrides = load_yaml(cls, known.config) if known.config else {}

    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML file of option: value")
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        default = overrides.get(field.name, field.default)
        kind = hints[field.name]
        flag = "--" + field.name.replace("_", "-")
        help_text = docs.get(field.name, "")
        if kind is bool:
            parser.add_argument(
                flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
            continue

        def convert(text: str, name: str = field.name, kind: Any = kind) -> Any:
            try:
                return coerce(name, kind, text, "command line")
            except ConfigError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        parser.add_argument(flag, dest=field.name, type=convert, default=default, help=help_text)
    values = vars(parser.parse_args(argv))
    values.pop("config")
    return cls(**values)
