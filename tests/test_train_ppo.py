"""`python -m training.train_ppo`: a short real run, bad input refused before any engine, and
the evaluation's ratios when the goodput controller scores 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agents.cost import LinearCost
from agents.features import SCHEMA_VERSION, FeatureBuilder, FeatureConfig, feature_names
from agents.goodput import GoodputController
from agents.policy import PPOController, residual_k
from training.cli import ConfigError, parse_config
from training.ppo_callbacks import comparison, is_better
from training.train_ppo import TrainConfig, main

ROOT = Path(__file__).resolve().parents[1]
TINY_TRACE = "synthetic:poisson?rate=6&duration=40&input_mean=48&output_mean=24&seed=2"


def train(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m training.train_ppo` with `args`, in a process of its own."""
    env = os.environ | {"VLLM_LOGGING_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "training.train_ppo", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.mark.engine
def test_a_short_training_run_leaves_a_usable_policy(tmp_path):
    args = [
        "--env.trace", TINY_TRACE, "--env.window-s", "4", "--train-until-s", "30",
        "--eval-window-start-s", "32", "--eval-window-s", "4",
        "--total-timesteps", "256", "--n-steps", "128", "--batch-size", "64", "--n-epochs", "2",
        "--eval-every", "128", "--checkpoint-every", "128", "--env.engine.max-num-seqs", "8",
        "--output-dir", str(tmp_path), "--run-name", "short",
    ]  # fmt: skip
    done = train(args)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "short"
    assert (run / "command.txt").read_text().startswith("python -m training.train_ppo --env.trace")
    saved = parse_config(TrainConfig, ["--config", str(run / "config.yaml")], "t", "t")
    assert saved.total_timesteps == 256 and saved.env.trace == TINY_TRACE
    assert sorted(p.name for p in (run / "checkpoints").glob("*.zip"))
    assert (run / "final_model.zip").is_file() and (run / "best" / "best_model.zip").is_file()
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert len(evals) >= 2 and all(e["goodput_ratio"] > 0 for e in evals)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timesteps"] >= 256 and not summary["interrupted"]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), "W&B logs offline by default"

    from stable_baselines3 import PPO

    # The default policy is residual: offsets -1..+1 to the goodput controller's k.
    model = PPO.load(run / "final_model.zip", device="cpu")
    assert model.action_space.n == 3
    base = GoodputController(LinearCost(0.01, 5e-4, 5e-4, 0.0, 0.0, 0.0), 4, 8)
    controller = PPOController.load(
        run / "policy", schema_version=SCHEMA_VERSION, feature_names=feature_names(), k_max=4,
        base=base,
    )  # fmt: skip
    assert (controller.metadata["action_mode"], controller.metadata["offset_max"]) == (
        "residual",
        1,
    )
    builder = FeatureBuilder(FeatureConfig(k_max=4, max_num_seqs=8, max_num_batched_tokens=2048,
                                           ttft_slo_s=1.0, tpot_slo_s=0.05))  # fmt: skip
    obs = builder.build(0.0)
    k = controller.decide(obs).k
    offset, _ = model.predict(obs.vector, deterministic=True)
    assert k == residual_k(base.decide(obs).k, int(offset), 1, 4)
    assert controller.metadata["engine"]["method"] == "ngram"
    assert np.all(np.asarray(controller.metadata["obs_range"]["low"]) <= obs.vector + 1)


@pytest.mark.engine
def test_a_twin_run_trains_on_recorded_windows_and_evaluates_live(tmp_path):
    args = [
        "--env.trace", TINY_TRACE, "--env.window-s", "4", "--train-until-s", "30",
        "--eval-window-start-s", "32", "--eval-window-s", "4", "--env.engine.max-num-seqs", "8",
        "--env.twin", "--env.window-pool", "2", "--env.reward.baseline", "goodput",
        "--total-timesteps", "512", "--n-steps", "256", "--batch-size", "64", "--n-epochs", "1",
        "--eval-every", "512", "--checkpoint-every", "512", "--no-track",
        "--output-dir", str(tmp_path), "--run-name", "twin",
    ]  # fmt: skip
    done = train(args)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "twin"
    saved = parse_config(TrainConfig, ["--config", str(run / "config.yaml")], "t", "t")
    assert saved.env.twin and saved.env.window_pool == 2 and saved.env.reward.baseline == "goodput"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timesteps"] >= 512
    # The evaluation replays the held-back window on the live engine.
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert evals and all(e["goodput_ratio"] > 0 for e in evals)


def exit_code(argv: list[str]) -> int:
    """main's return code, or argparse's exit code for a flag it rejects."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env.trace", "/nonexistent/trace.csv"], "/nonexistent/trace.csv"),
        (["--total-timesteps", "many"], "total_timesteps expects int, got 'many'"),
        (["--env.engine.method", "eagle"], "env.engine.method expects one of ngram, draft_model"),
        (
            ["--env.engine.method", "none", "--env.engine.k-max", "0"],
            "env.engine.method='none' must be ngram or draft_model",
        ),
        (["--env.window-start-s", "5"], "env.window_start_s=5.0: training draws each episode's"),
        (["--env.engine.seed", "1"], "env.engine.seed=1: in training the engine's seed is seed=0"),
        (["--eval-window-start-s", "10"], "eval_window_start_s=10.0 lies inside the training"),
        (["--action-mode", "relative"], "action_mode='relative' must be absolute or residual"),
        (["--offset-max", "0"], "offset_max=0 must be >= 1 in residual mode"),
        (["--env.twin", "--env.clock", "wall"], "the twin runs on the model clock only"),
        (["--env.reward.baseline", "best"], "reward baseline='best' must be one of"),
        (["--method", "eagle"], "env.engine.method expects one of"),
    ],
)
def test_bad_arguments_fail_before_any_engine_starts(argv, message, tmp_path, capsys):
    assert exit_code([*argv, "--output-dir", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists(), "no run folder for a refused run"


def test_bad_config_files(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("total_timesteps: 10\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=f"config file {unknown}: unknown key.s. learning_rat"):
        parse_config(TrainConfig, ["--config", str(unknown)], "t", "t")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("n_envs: two\n")
    with pytest.raises(ConfigError, match="n_envs expects int, got 'two'"):
        parse_config(TrainConfig, ["--config", str(wrong)], "t", "t")
    assert exit_code(["--config", str(unknown), "--output-dir", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.engine
def test_a_terminated_run_saves_and_exports_before_exiting(tmp_path):
    args = [
        "--env.trace", TINY_TRACE, "--env.window-s", "4", "--train-until-s", "30",
        "--eval-window-start-s", "32", "--eval-window-s", "4", "--total-timesteps", "100000",
        "--n-steps", "64", "--batch-size", "64", "--n-epochs", "1", "--eval-every", "0",
        "--checkpoint-every", "64", "--env.engine.max-num-seqs", "8", "--action-mode", "absolute",
        "--output-dir", str(tmp_path), "--run-name", "stopped",
    ]  # fmt: skip
    env = os.environ | {"VLLM_LOGGING_LEVEL": "WARNING"}
    run = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.train_ppo", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not list((run / "checkpoints").glob("*.zip")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: saving the model" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and 0 < summary["timesteps"] < 100000
    assert (run / "final_model.zip").is_file()
    assert (run / "policy" / "policy.safetensors").is_file()
    meta = json.loads((run / "policy" / "policy.json").read_text())
    assert meta["action_mode"] == "absolute" and meta["k_max"] == 4


def _eval_metrics(goodput: float, under_slo: float) -> dict[str, float]:
    return {
        "goodput_tps": goodput,
        "goodput_under_slo_tps": under_slo,
        "slo_attainment": 0.0,
        "mean_k": 2.0,
    }


def test_the_evaluation_ratio_to_a_controller_that_scored_zero_is_undefined():
    row = comparison(128, _eval_metrics(120, 0), _eval_metrics(100, 0))
    assert row["goodput_ratio"] == pytest.approx(1.2)
    assert row["goodput_under_slo_ratio"] is None
    assert row["undefined"] == {
        "goodput_under_slo_ratio": "the goodput controller's goodput under SLO is 0"
    }
    json.dumps(row, allow_nan=False)  # eval.jsonl holds null, not NaN
    idle = comparison(128, _eval_metrics(0, 0), _eval_metrics(0, 0))
    assert idle["goodput_ratio"] is None and set(idle["undefined"]) == {
        "goodput_ratio",
        "goodput_under_slo_ratio",
    }


def test_the_best_model_is_picked_among_defined_ratios():
    undefined = comparison(1, _eval_metrics(120, 0), _eval_metrics(100, 0))
    low = comparison(2, _eval_metrics(120, 40), _eval_metrics(100, 50))
    high = comparison(3, _eval_metrics(120, 60), _eval_metrics(100, 50))
    assert is_better(undefined, None), "the first evaluation is the best so far"
    assert is_better(low, undefined) and not is_better(undefined, low)
    assert is_better(high, low) and not is_better(low, high)
