"""`training.cli`: nested config dataclasses from dotted flags and nested or dotted YAML, old
spellings kept with a warning, errors that name the key, the file and the type; and the
environment flags the evaluation commands share."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from envs.config import EnvConfig
from envs.ledger import SLO
from serving.config import EngineConfig
from training.cli import (
    ENV_FLAGS,
    ConfigError,
    add_env_flags,
    coerce,
    config_mapping,
    deprecated_alias,
    parse_config,
    read_env_flags,
)


@dataclass(frozen=True)
class Inner:
    """A nested section."""

    mode: Literal["fast", "slow"] = "fast"
    """How to go."""
    weights: dict[str, float] = field(default_factory=lambda: {"a": 1.0})
    """Mix of parts."""
    sizes: tuple[int, ...] = (1, 2)
    """Layer sizes."""
    label: str = "none"
    """A plain string that may read none."""


@dataclass(frozen=True)
class Middle:
    """A section holding a section."""

    inner: Inner = field(default_factory=Inner)
    """The innermost one."""
    rate: float = 1.0
    """Arrival rate."""
    on: bool = False
    """A switch."""


@dataclass
class Outer:
    """The arguments."""

    middle: Middle = field(default_factory=lambda: Middle(rate=2.0))
    """The middle section."""
    steps: int = 10
    """Steps to run."""
    name: str | None = None
    """A name, or None."""


RENAMED = {"rate": "middle.rate", "mode": "middle.inner.mode", "on": "middle.on"}


def parse(argv: list[str]) -> Outer:
    return parse_config(Outer, argv, "t", "t", RENAMED)


def test_defaults_come_from_the_enclosing_fields_default():
    assert parse([]) == Outer()
    assert parse([]).middle.rate == 2.0


def test_dotted_flags_set_nested_fields():
    argv = [
        "--middle.rate", "3", "--middle.inner.mode", "slow", "--middle.on", "--steps", "4",
        "--middle.inner.weights", "a=0.5,b=0.5", "--middle.inner.sizes", "8,8,4",
        "--name", "none", "--middle.inner.label", "none",
    ]  # fmt: skip
    cfg = parse(argv)
    assert cfg.middle == Middle(Inner("slow", {"a": 0.5, "b": 0.5}, (8, 8, 4)), 3.0, True)
    assert cfg.steps == 4
    assert cfg.name is None, "none is None where the field takes None"
    assert cfg.middle.inner.label == "none", "and the string itself where it does not"
    assert not parse(["--middle.on", "--no-middle.on"]).middle.on


def test_nested_and_dotted_yaml_keys_mix_and_flags_win(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "middle:\n  inner.mode: slow\n  inner:\n    weights: {x: 2}\n"
        "middle.inner.sizes: [3]\nmiddle.rate: 5\nsteps: 7\n"
    )
    cfg = parse(["--config", str(config), "--steps", "8"])
    assert cfg.middle == Middle(Inner("slow", {"x": 2.0}, (3,)), 5.0)
    assert cfg.steps == 8


def test_old_flat_spellings_warn_and_name_the_new_key(tmp_path, capsys):
    cfg = parse(["--rate", "4", "--mode", "slow", "--on"])
    assert (cfg.middle.rate, cfg.middle.inner.mode, cfg.middle.on) == (4.0, "slow", True)
    err = capsys.readouterr().err
    assert "--rate is deprecated and will be removed in the next release; use --middle.rate" in err
    assert "--mode is deprecated" in err and "use --middle.inner.mode" in err
    assert "--on is deprecated" in err and "use --middle.on" in err
    assert not parse(["--on", "--no-on"]).middle.on
    assert "--no-on is deprecated" in capsys.readouterr().err

    config = tmp_path / "flat.yaml"
    config.write_text("rate: 6\nsteps: 2\n")
    assert parse(["--config", str(config)]).middle.rate == 6.0
    err = capsys.readouterr().err
    assert f"config file {config}: key rate is deprecated" in err and "use middle.rate" in err


def test_an_old_null_means_the_new_keys_default(tmp_path, capsys):
    config = tmp_path / "flat.yaml"
    config.write_text("mode: null\n")
    assert parse(["--config", str(config)]).middle.inner.mode == "fast"


def test_the_help_shows_each_nested_fields_docstring(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--middle.inner.mode {fast,slow} How to go." in out
    assert "--middle.inner.weights WEIGHTS Mix of parts." in out
    assert "The middle section." in out and "--rate" not in out, "old spellings are hidden"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("middle:\n  inner:\n    moode: slow\n", "unknown key(s) middle.inner.moode"),
        ("middle.inner.mode: slow\nmiddle:\n  inner: {mode: fast}\n", "middle.inner.mode is given"),
        ("middle.rate: fast\n", "middle.rate expects float, got 'fast'"),
        ("middle.inner.mode: medium\n", "middle.inner.mode expects one of fast, slow, got 'me"),
        ("middle: 3\n", "middle expects a mapping of its fields, got 3"),
        ("middle.inner.weights: [1]\n", "weights expects a mapping of str: float, got [1]"),
        ("middle.inner.weights: {a: lots}\n", "middle.inner.weights.a expects float, got 'lots'"),
        ("middle.inner.sizes: 3\n", "middle.inner.sizes expects a list of int, got 3"),
        ("steps: null\n", "steps must not be empty (expected int)"),
    ],
)
def test_bad_yaml_names_the_key_the_file_and_the_type(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        parse(["--config", str(config)])
    assert str(err.value).startswith(f"config file {config}: ")
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--middle.inner.mode", "medium"], "middle.inner.mode expects one of fast, slow"),
        (["--middle.inner.weights", "a:1"], "middle.inner.weights expects key=value pairs"),
        (["--middle.rate", "x"], "command line: middle.rate expects float, got 'x'"),
        (["--middle.ratee", "1"], "unrecognized arguments: --middle.ratee"),
    ],
)
def test_bad_flags_name_the_flag_and_the_type(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


def test_a_renamed_key_must_name_a_field():
    with pytest.raises(TypeError, match="no field for: middle.speed"):
        parse_config(Outer, [], "t", "t", {"speed": "middle.speed"})


def test_the_mapping_reads_back_as_the_same_config(tmp_path):
    import yaml

    cfg = parse(["--middle.inner.weights", "a=0.25,c=0.75", "--middle.inner.sizes", "5,6"])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_mapping(cfg), sort_keys=False))
    assert parse(["--config", str(config)]) == cfg


def test_coerce_reads_literals_and_mappings():
    assert coerce("m", Literal["a", "b"], "b", "here") == "b"
    assert coerce("w", dict[str, float], {"x": 1}, "here") == {"x": 1.0}
    assert coerce("w", dict[str, float] | None, "null", "here") is None
    with pytest.raises(ConfigError, match="here: m expects one of a, b, got 'c'"):
        coerce("m", Literal["a", "b"], "c", "here")


def test_a_deprecated_boolean_alias_sets_its_pair(capsys):
    p = argparse.ArgumentParser()
    action = p.add_argument("--new-flag", action=argparse.BooleanOptionalAction, default=None)
    deprecated_alias(p, action, "--old-flag")
    assert p.parse_args(["--old-flag"]).new_flag is True
    assert p.parse_args(["--no-old-flag"]).new_flag is False
    err = capsys.readouterr().err
    assert "--old-flag is deprecated" in err and "use --new-flag" in err
    assert "--no-old-flag is deprecated" in err and "use --no-new-flag" in err


def env_parser(*names: str, **kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_env_flags(p, names or tuple(ENV_FLAGS), **kwargs)
    return p


def test_the_env_flags_keep_their_flat_spellings_and_read_into_an_env_config():
    argv = [
        "--trace", "synthetic:poisson?rate=2", "--trace-format", "azure", "--window-s", "5",
        "--rate-scale", "2", "--length-scale", "0.5", "--max-input-tokens", "100",
        "--max-output-tokens", "50", "--method", "draft_model", "--k-max", "3",
        "--max-num-seqs", "8", "--clock", "wall", "--profile", "ngram", "--ttft-slo-s", "0.5",
        "--tpot-slo-s", "0.1",
    ]  # fmt: skip
    env = read_env_flags(env_parser().parse_args(argv))
    assert env == EnvConfig(
        trace="synthetic:poisson?rate=2", trace_format="azure", window_s=5.0, rate_scale=2.0,
        length_scale=0.5, max_input_tokens=100, max_output_tokens=50,
        engine=EngineConfig(method="draft_model", k_max=3, max_num_seqs=8), clock="wall",
        profile="ngram", slo=SLO(ttft_s=0.5, tpot_s=0.1),
    )  # fmt: skip
    assert read_env_flags(env_parser().parse_args(["--twin"])).twin
    assert read_env_flags(env_parser().parse_args([])) == EnvConfig()


def test_a_command_picks_its_env_flags_defaults_and_help(capsys):
    p = env_parser(
        "trace", "window_s", "method", defaults={"trace": "azure-conv", "window_s": 60.0},
        help={"trace": "a region"},
    )  # fmt: skip
    args = p.parse_args([])
    assert vars(args) == {"trace": "azure-conv", "window_s": 60.0, "method": "ngram"}
    base = EnvConfig(rate_scale=3.0)
    assert read_env_flags(args, base) == EnvConfig(trace="azure-conv", window_s=60.0, rate_scale=3)
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--trace TRACE a region" in out
    assert "--window-s WINDOW_S Seconds of trace time per episode" in out, "the docstring"
    assert "--method {ngram,draft_model}" in out, "nospec is a controller, not a method"
    with pytest.raises(ValueError, match="no environment flag windows"):
        env_parser("windows")


def test_slo_flags_left_unset_keep_the_base_slo():
    # As training.evaluate reads them: the profile's deployment sets the SLOs first, then
    # only the flags given override them.
    p = env_parser(defaults={"ttft_slo_s": None, "tpot_slo_s": None})
    deployed = EnvConfig(slo=SLO(ttft_s=0.5, tpot_s=0.03))
    slo_flags = ("ttft_slo_s", "tpot_slo_s")
    assert read_env_flags(p.parse_args([])).slo == SLO()
    assert read_env_flags(p.parse_args([]), deployed, slo_flags) == deployed
    given = read_env_flags(p.parse_args(["--tpot-slo-s", "0.2"]), deployed, slo_flags)
    assert given.slo == SLO(ttft_s=0.5, tpot_s=0.2)


def test_a_bad_env_flag_names_the_flag_and_the_type(capsys):
    with pytest.raises(SystemExit):
        env_parser().parse_args(["--k-max", "four"])
    assert (
        "argument --k-max: command line: k_max expects int, got 'four'" in capsys.readouterr().err
    )
