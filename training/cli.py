"""Command lines from dataclasses: one field a flag, its docstring the help, YAML for defaults.

A config dataclass documents each field with a string literal right below it (an attribute
docstring). A field whose type is itself a dataclass is nested, not copied: its fields are
flags and keys by dotted path (`--env.engine.method`, `env.engine.method: ngram`), or nested
mappings in YAML (`env: {engine: {method: ngram}}`), mixed freely. `parse_config` reads an
optional YAML file (`--config PATH`) over the dataclass defaults, then the command line over
both; unknown keys and values of the wrong type are errors that name the key, the file and
the expected type. `config_mapping` is the nested mapping that `--config` reads back.

`deprecated_alias` keeps an old option spelling working, with a warning, for one release after
a rename; `parse_config(renamed=...)` does the same for old flags and YAML keys alike.

`add_env_flags` and `read_env_flags` are the environment flags that the evaluation commands
share (`--trace`, `--method`, `--profile`, ...: flat, each naming one field of `EnvConfig`).
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
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from envs.config import EnvConfig
from envs.traces.loader import LOADERS
from serving.config import METHODS

T = TypeVar("T")
NONE = ("none", "null")
"""How the command line spells None, for a field that takes it."""


class ConfigError(ValueError):
    """A config file or flag that does not fit the config dataclass."""


def _warn_deprecated(old: str, new: str) -> None:
    print(
        f"warning: {old} is deprecated and will be removed in the next release; use {new}",
        file=sys.stderr,
    )


class _DeprecatedAlias(argparse.Action):
    """Stores into the renamed option's destination, after a warning on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        _warn_deprecated(option_string, self.new)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated_alias(parser: argparse.ArgumentParser, action: argparse.Action, *old: str) -> None:
    """Accept the old spellings `old` of the option `action` (what add_argument returned).

    They set the same value, warn on stderr that they are deprecated, and are left out of
    --help. An old spelling of a `--flag/--no-flag` pair brings its `--no-` form along. Kept
    for one release after a rename.
    """
    for name in old:
        if isinstance(action, argparse.BooleanOptionalAction):
            yes, no = action.option_strings
            for spelled, value, new in ((name, True, yes), ("--no-" + name[2:], False, no)):
                parser.add_argument(
                    spelled,
                    dest=action.dest,
                    nargs=0,
                    const=value,
                    default=argparse.SUPPRESS,
                    help=argparse.SUPPRESS,
                    action=_DeprecatedAlias,
                    new=new,
                )
            continue
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


def type_name(kind: Any) -> str:
    """How an error names the type a field expects."""
    inner, optional = _unwrap_optional(kind)
    origin = typing.get_origin(inner)
    if origin is typing.Literal:
        name = "one of " + ", ".join(str(a) for a in typing.get_args(inner))
    elif origin is tuple:
        name = f"a list of {type_name(typing.get_args(inner)[0])}"
    elif origin is dict:
        key, value = typing.get_args(inner)
        name = f"a mapping of {type_name(key)}: {type_name(value)}"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or None" if optional else name


def coerce(name: str, kind: Any, value: Any, where: str) -> Any:
    """`value` as type `kind`, or ConfigError naming the field and where it came from.

    On the command line a tuple is comma-separated (`64,64`) and a mapping is comma-separated
    key=value pairs (`source=0.5,random=0.5`); in YAML they are a list and a mapping. "none"
    or "null" is None where the field takes None, else the string itself (a baseline "none").
    """
    inner, optional = _unwrap_optional(kind)
    if optional and (value is None or (isinstance(value, str) and value.lower() in NONE)):
        return None
    if value is None:
        raise ConfigError(f"{where}: {name} must not be empty (expected {type_name(inner)})")
    origin = typing.get_origin(inner)
    if origin is tuple:
        item = typing.get_args(inner)[0]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{where}: {name} expects {type_name(inner)}, got {value!r}")
        return tuple(coerce(name, item, v, where) for v in items if v != "")
    if origin is dict:
        key_kind, value_kind = typing.get_args(inner)
        pairs = value
        if isinstance(value, str):
            parts = [p.partition("=") for p in value.split(",") if p]
            if not all(sep for _, sep, _ in parts):
                raise ConfigError(
                    f"{where}: {name} expects key=value pairs separated by commas, got {value!r}"
                )
            pairs = {key: text for key, _, text in parts}
        if not isinstance(pairs, dict):
            raise ConfigError(f"{where}: {name} expects {type_name(inner)}, got {value!r}")
        return {
            coerce(name, key_kind, k, where): coerce(f"{name}.{k}", value_kind, v, where)
            for k, v in pairs.items()
        }
    if origin is typing.Literal:
        if value in typing.get_args(inner):
            return value
    elif inner is bool:
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
    raise ConfigError(f"{where}: {name} expects {type_name(inner)}, got {value!r}")


def _is_config(kind: Any) -> bool:
    """Whether a field of this type is nested (its fields are keys of their own)."""
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """A field that takes a value: a flag, and a key of the YAML file."""

    kind: Any
    default: Any
    doc: str


@dataclasses.dataclass
class _Layout:
    """The fields of a config dataclass by dotted path: leaves, and the nested sections."""

    leaves: dict[str, _Leaf] = dataclasses.field(default_factory=dict)
    sections: dict[str, str] = dataclasses.field(default_factory=dict)
    """Dotted path of each nested dataclass field: its docstring."""


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"config field {field.name} has no default")


def _layout(
    cls: type, defaults: Any = None, prefix: str = "", found: _Layout | None = None
) -> _Layout:
    """Every field of `cls`, nested ones under their dotted path, with the default of each:
    the field's, or its value in `defaults` (the enclosing field's default instance)."""
    found = _Layout() if found is None else found
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        path = prefix + field.name
        default = _default(field) if defaults is None else getattr(defaults, field.name)
        if _is_config(hints[field.name]):
            found.sections[path] = docs.get(field.name, "")
            _layout(hints[field.name], default, path + ".", found)
        else:
            found.leaves[path] = _Leaf(hints[field.name], default, docs.get(field.name, ""))
    return found


def _build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """`cls` from leaf values by dotted path, nested dataclasses built from the inside out."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        path = prefix + field.name
        kind = hints[field.name]
        kwargs[field.name] = _build(kind, values, path + ".") if _is_config(kind) else values[path]
    return cls(**kwargs)


def load_yaml(cls: type, path: Path, renamed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The values a YAML file sets for `cls`, by dotted path, each checked and converted.

    Keys nest as mappings or as dotted keys, mixed freely. A top-level key of `renamed`
    (old name: new dotted path) is read as its new key, with a warning; given as null where
    the new key takes no None, it means the new key's default (a flat `reward_baseline:
    null` was the `none` baseline).
    """
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    layout = _layout(cls)
    renamed = renamed or {}
    where = f"config file {path}"
    values: dict[str, Any] = {}
    unknown: list[str] = []

    def read(mapping: dict, prefix: str) -> None:
        for key, value in mapping.items():
            name = prefix + str(key)
            if not prefix and name in renamed:
                _warn_deprecated(f"{where}: key {name}", renamed[name])
                name = renamed[name]
                leaf = layout.leaves[name]
                if value is None and not _unwrap_optional(leaf.kind)[1]:
                    value = leaf.default
            if name in layout.sections:
                if not isinstance(value, dict):
                    raise ConfigError(
                        f"{where}: {name} expects a mapping of its fields, got {value!r}"
                    )
                read(value, name + ".")
            elif name in layout.leaves:
                if name in values:
                    raise ConfigError(f"{where}: {name} is given twice")
                values[name] = coerce(name, layout.leaves[name].kind, value, where)
            else:
                unknown.append(name)

    read(data, "")
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; see --help for the options"
        )
    return values


def _flag(path: str) -> str:
    """The command-line spelling of a dotted field path: --env.engine.max-num-seqs."""
    return "--" + path.replace("_", "-")


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    renamed: Mapping[str, str] | None = None,
) -> T:
    """Build `cls` from its defaults, then `--config FILE` (YAML), then the command line.

    `renamed` maps the old names of fields that moved (flat, as `old_name`) to their dotted
    paths: the old flags and top-level YAML keys still set them, with a warning on stderr.
    """
    renamed = renamed or {}
    layout = _layout(cls)
    lost = sorted(set(renamed.values()) - set(layout.leaves))
    if lost:
        raise TypeError(f"renamed to what {cls.__name__} has no field for: {', '.join(lost)}")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    overrides = load_yaml(cls, known.config, renamed) if known.config else {}

    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML file of option: value (nested or dotted)"
    )
    groups = {path: parser.add_argument_group(path, doc) for path, doc in layout.sections.items()}
    actions = {}
    for path, leaf in layout.leaves.items():
        group = groups.get(path.rpartition(".")[0], parser)
        default = overrides.get(path, leaf.default)
        if leaf.kind is bool:
            actions[path] = group.add_argument(
                _flag(path),
                dest=path,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=leaf.doc,
            )
            continue

        def convert(text: str, name: str = path, kind: Any = leaf.kind) -> Any:
            try:
                return coerce(name, kind, text, "command line")
            except ConfigError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        inner, _ = _unwrap_optional(leaf.kind)
        choices = typing.get_args(inner) if typing.get_origin(inner) is typing.Literal else None
        actions[path] = group.add_argument(
            _flag(path),
            dest=path,
            type=convert,
            default=default,
            help=leaf.doc,
            metavar="{" + ",".join(choices) + "}" if choices else path.rpartition(".")[2].upper(),
        )
    for old, new in renamed.items():
        deprecated_alias(parser, actions[new], _flag(old))
    values = vars(parser.parse_args(argv))
    values.pop("config")
    return _build(cls, values)


def config_mapping(config: Any) -> dict[str, Any]:
    """A config dataclass as the nested mapping of plain values that `--config` reads back
    (tuples as lists, so that YAML's safe dumper takes them)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    return plain(dataclasses.asdict(config))


# --- the environment flags of the evaluation commands -------------------------------------

ENV_FLAGS: dict[str, str] = {
    "trace": "trace",
    "trace_format": "trace_format",
    "window_s": "window_s",
    "rate_scale": "rate_scale",
    "length_scale": "length_scale",
    "max_input_tokens": "max_input_tokens",
    "max_output_tokens": "max_output_tokens",
    "method": "engine.method",
    "k_max": "engine.k_max",
    "max_num_seqs": "engine.max_num_seqs",
    "max_num_batched_tokens": "engine.max_num_batched_tokens",
    "max_model_len": "engine.max_model_len",
    "clock": "clock",
    "profile": "profile",
    "ttft_slo_s": "slo.ttft_s",
    "tpot_slo_s": "slo.tpot_s",
    "twin": "twin",
}
"""The flat flags the evaluation commands share (as `args` names them): their EnvConfig field."""

_CHOICES = {
    "trace_format": tuple(LOADERS),
    # The commands compare controllers on a speculating engine; nospec is a controller.
    "method": tuple(m for m in METHODS if m != "none"),
}


def add_env_flags(
    parser: argparse.ArgumentParser,
    names: Collection[str] = tuple(ENV_FLAGS),
    *,
    defaults: Mapping[str, Any] | None = None,
    help: Mapping[str, str] | None = None,
) -> dict[str, argparse.Action]:
    """Add the environment flags `names` (keys of ENV_FLAGS, spelled `--window-s`) to `parser`.

    Each flag's default is EnvConfig's unless `defaults` gives the command's own; a default of
    None for a field that takes no None means "not given": `read_env_flags` leaves the field
    alone (e.g. an SLO that a GPU profile's deployment sets). Help is the field's docstring
    unless `help` gives the command's. Returns the added actions by name (for
    `deprecated_alias`).
    """
    defaults = defaults or {}
    help = help or {}
    unknown = sorted((set(names) | set(defaults) | set(help)) - set(ENV_FLAGS))
    if unknown:
        raise ValueError(f"no environment flag {', '.join(unknown)}")
    layout = _layout(EnvConfig)
    actions = {}
    for name in names:
        leaf = layout.leaves[ENV_FLAGS[name]]
        default = defaults.get(name, leaf.default)
        text = help.get(name, leaf.doc)
        if leaf.kind is bool:
            actions[name] = parser.add_argument(
                _flag(name), action="store_true", default=default, help=text
            )
            continue

        def convert(value: str, name: str = name, kind: Any = leaf.kind) -> Any:
            try:
                return coerce(name, kind, value, "command line")
            except ConfigError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        actions[name] = parser.add_argument(
            _flag(name), type=convert, default=default, choices=_CHOICES.get(name), help=text
        )
    return actions


def read_env_flags(
    args: argparse.Namespace,
    base: EnvConfig | None = None,
    names: Collection[str] = tuple(ENV_FLAGS),
) -> EnvConfig:
    """`base` (default: EnvConfig()) with the environment flags of `args` among `names`.

    A flag the command does not have, or left at None for a field that takes no None, keeps
    base's value.
    """
    env = EnvConfig() if base is None else base
    layout = _layout(EnvConfig)
    given: dict[str, Any] = {}
    for name in names:
        if not hasattr(args, name):
            continue
        path, value = ENV_FLAGS[name], getattr(args, name)
        if value is None and not _unwrap_optional(layout.leaves[path].kind)[1]:
            continue  # not given: base's value stands
        given[path] = value
    return _replace(env, given)


def _replace(config: T, values: Mapping[str, Any]) -> T:
    """`config` with the fields at dotted paths replaced, nested configs rebuilt."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, dot, rest = path.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = _replace(getattr(config, head), inner)
    return dataclasses.replace(config, **top)
