"""`TrainConfig`: the environment nested under `env`, the training and evaluation environments
derived from it, the old flat spellings, and the run folder's config.yaml read back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agents.paths import PROJECT_ROOT
from training.cli import parse_config
from training.train_ppo import RENAMED, TrainConfig, prepare_run

CONFIGS = sorted((PROJECT_ROOT / "training" / "configs").glob("*.yaml"))


def parse(argv: list[str]) -> TrainConfig:
    return parse_config(TrainConfig, argv, "t", "t", RENAMED)


def test_the_environments_of_training_and_evaluation():
    argv = [
        "--env.window-s", "30", "--train-until-s", "600", "--env.twin", "--env.window-pool", "4",
        "--eval-window-start-s", "700", "--eval-window-s", "10", "--seed", "3",
    ]  # fmt: skip
    cfg = parse(argv)
    train = cfg.train_env()
    assert (train.window_start_s, train.latest_start_s) == (None, 570.0), "random starts"
    assert train.twin and train.window_pool == 4 and train.engine.seed == 3
    held_back = cfg.eval_env()
    assert (held_back.window_start_s, held_back.latest_start_s) == (700.0, None)
    assert held_back.window_s == 10 and held_back.trace == cfg.env.trace
    assert not held_back.twin and held_back.window_pool == 0, "evaluations run live"
    assert held_back.engine == train.engine and held_back.slo == train.slo
    other = parse(["--eval-trace", "synthetic:poisson?rate=1", "--eval-window-start-s", "0"])
    assert other.eval_env().trace == "synthetic:poisson?rate=1"
    assert parse(["--train-until-s", "10", "--env.window-s", "20"]).train_env().latest_start_s == 0


def test_the_defaults_are_those_of_the_flat_config_before():
    cfg = TrainConfig()
    train = cfg.train_env()
    assert train.trace.startswith("synthetic:bursty?rate=6&cv=3&duration=600")
    assert (train.window_s, train.latest_start_s, train.max_steps) == (20.0, 460.0, 5000)
    assert (train.engine.method, train.engine.k_max, train.engine.max_num_seqs) == ("ngram", 4, 32)
    assert (train.slo.ttft_s, train.slo.tpot_s) == (1.0, 0.05)
    assert (train.reward.reference_tps, train.reward.baseline) == (500.0, "none")
    assert (train.clock, train.profile, train.twin, train.window_pool) == ("model", None, False, 0)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_nested(path, capsys):
    cfg = parse(["--config", str(path)])
    assert cfg.eval_env().window_start_s == cfg.eval_window_start_s
    assert not capsys.readouterr().err, "no deprecated keys in a shipped config"


def test_the_flat_spellings_still_work_with_a_warning(tmp_path, capsys):
    flat = tmp_path / "flat.yaml"
    flat.write_text(
        "trace: synthetic:poisson?rate=2\nmethod: draft_model\nttft_slo_s: 0.5\n"
        "reward_baseline: null\nmax_episode_steps: 100\ntotal_timesteps: 64\n"
    )
    cfg = parse(["--config", str(flat), "--twin", "--reward-baseline", "goodput", "--k-max", "3"])
    nested = [
        "--env.trace", "synthetic:poisson?rate=2", "--env.engine.method", "draft_model",
        "--env.slo.ttft-s", "0.5", "--env.max-steps", "100", "--total-timesteps", "64",
        "--env.twin", "--env.reward.baseline", "goodput", "--env.engine.k-max", "3",
    ]  # fmt: skip
    assert cfg == parse(nested)
    err = capsys.readouterr().err
    assert f"config file {flat}: key method is deprecated" in err and "use env.engine.method" in err
    assert "key max_episode_steps is deprecated" in err and "use env.max_steps" in err
    assert "--reward-baseline is deprecated" in err and "use --env.reward.baseline" in err
    assert "--twin is deprecated" in err and "use --env.twin" in err
    flat.write_text("reward_baseline: null\n")
    assert parse(["--config", str(flat)]).env.reward.baseline == "none", "null was no baseline"


def test_the_run_folders_config_reads_back_as_the_same_config(tmp_path, capsys):
    argv = [
        "--env.engine.method", "draft_model", "--env.prompt-styles", "source=0.75,random=0.25",
        "--env.temperatures", "0.0", "--env.reward.reference-steps", "8", "--net-arch", "32,16",
        "--env.slo.tpot-s", "0.1", "--output-dir", str(tmp_path), "--run-name", "r",
    ]  # fmt: skip
    cfg = parse(argv)
    run = prepare_run(cfg, argv)
    text = (run / "config.yaml").read_text()
    assert str(PROJECT_ROOT) not in text, "no machine's paths"
    engine = yaml.safe_load(text)["env"]["engine"]
    assert (engine["model"], engine["draft_model"]) == (
        "checkpoints/lm/target",
        "checkpoints/lm/draft",
    )
    assert parse(["--config", str(run / "config.yaml")]) == cfg
    assert not capsys.readouterr().err


def test_a_recorded_config_reads_back_from_another_directory(tmp_path, monkeypatch):
    cfg = parse(["--output-dir", str(tmp_path), "--run-name", "r"])
    config = prepare_run(cfg, []) / "config.yaml"
    monkeypatch.chdir(tmp_path)
    back = parse(["--config", str(config)])
    assert Path(back.env.engine.model) == PROJECT_ROOT / "checkpoints" / "lm" / "target"
    assert back == cfg
