"""`python -m training.evaluate`: real side-by-side runs, bad input refused up front, and
undefined ratios and late failures reported, never lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import training.evaluate as evaluate_module
from agents.registry import parse_controller
from training.bootstrap import ratio_interval
from training.evaluate import METRICS, Run, format_table, main, table

ROOT = Path(__file__).resolve().parents[1]
TINY_TRACE = "synthetic:poisson?rate=6&duration=5&input_mean=48&output_mean=24&seed=4"


def test_controllers_replay_the_same_window_side_by_side(tmp_path):
    out = tmp_path / "table.json"
    args = [
        "--trace", TINY_TRACE, "--window-s", "5", "--max-num-seqs", "8",
        "--controllers", "nospec,static:0,static:3,vllm-schedule,goodput",
        "--repeats", "3", "--json", str(out), "--plot", str(tmp_path / "plot.png"),
    ]  # fmt: skip
    env = os.environ | {"VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "training.evaluate", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "gp/best" in done.stdout and "goodput" in done.stdout
    table = json.loads(out.read_text())
    rows = {row["controller"]: row for row in table["rows"]}
    assert list(rows) == ["nospec", "static:0", "static:3", "vllm-schedule", "goodput"]
    assert rows["static:0"]["mean_k"] == 0 and rows["static:3"]["mean_k"] == 3
    assert rows["nospec"]["mean_k"] == 0
    best_static = max(rows["static:0"]["goodput_tps"], rows["static:3"]["goodput_tps"])
    for row in rows.values():
        # Same requests for everyone: every controller finishes the whole window.
        assert row["goodput_tps"] > 0
        assert row["goodput_vs_best_static"] == pytest.approx(row["goodput_tps"] / best_static)
        assert 0 <= row["slo_attainment"] <= 1
        # The row is the mean of the repeats, which are all kept and printed.
        repeats = [m["goodput_under_slo_tps"] for m in table["repeats"][row["controller"]]]
        assert len(repeats) == 3
        assert row["goodput_under_slo_tps"] == pytest.approx(sum(repeats) / 3)
        printed = " / ".join(f"{value:.0f}" for value in repeats)
        assert f"{row['controller']} " in done.stdout and f"per repeat: {printed}" in done.stdout
    # From 3 repeats on, the adaptive controllers get paired intervals against the baselines.
    under_slo = {
        name: [m["goodput_under_slo_tps"] for m in ms] for name, ms in table["repeats"].items()
    }
    assert set(table["intervals"]) == {"vllm-schedule", "goodput"}
    found = table["intervals"]["vllm-schedule"]
    expected = ratio_interval(
        under_slo["vllm-schedule"], [under_slo["static:0"], under_slo["static:3"]]
    )
    assert found["best_static"] == pytest.approx(vars(expected))
    assert f"/ best_static {expected.ratio:.3f} [{expected.low:.3f}" in done.stdout
    assert (tmp_path / "plot.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--controllers", "static:2,turbo"], "unknown controller 'turbo'"),
        (["--controllers", "static:9"], "controller 'static:9': K must be a whole number in 0..4"),
        (["--controllers", "goodput", "--profile", "/nonexistent/p.json"], "/nonexistent/p.json"),
        (["--max-input-tokens", "1000"], "max_input_tokens + max_output_tokens = 1128 exceeds"),
        (["--trace", "/nonexistent/trace.csv"], "/nonexistent/trace.csv"),
        (["--window-start-s", "100000"], "no requests in the 60.0 s window at 100000.0 s"),
    ],
)
def test_bad_input_is_refused_before_any_replay(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "goodput tok/s" not in err


def test_old_option_spellings_still_work_with_a_deprecation_warning(capsys):
    assert main(["--window", "5", "--window-start", "100000", "--ttft-slo", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "no requests in the 5.0 s window at 100000.0 s" in err
    assert "--window is deprecated and will be removed in the next release; use --window-s" in err
    assert "--window-start is deprecated" in err and "use --window-start-s" in err
    assert "--ttft-slo is deprecated" in err


def test_an_slo_no_request_meets_still_gives_the_table_and_the_json(tmp_path):
    # Every goodput under SLO is 0: each ratio to a reference under SLO is undefined.
    out = tmp_path / "table.json"
    args = [
        "--trace", TINY_TRACE, "--window-s", "3", "--max-num-seqs", "8",
        "--controllers", "nospec,static:2,goodput", "--repeats", "3",
        "--ttft-slo-s", "0.001", "--json", str(out),
    ]  # fmt: skip
    env = os.environ | {"VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "training.evaluate", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    table = json.loads(out.read_text())
    assert table["error"] is None
    for row in table["rows"]:
        assert row["goodput_under_slo_tps"] == 0 and row["goodput_tps"] > 0
        assert row["goodput_vs_best_static"] > 0
        assert row["under_slo_vs_best_static"] is None and row["under_slo_vs_nospec"] is None
        assert row["undefined"] == {
            "under_slo_vs_best_static": "the best static k's goodput under SLO is 0",
            "under_slo_vs_nospec": "nospec's goodput under SLO is 0",
        }
        assert f"{row['controller']} " in done.stdout
    assert table["intervals"]["goodput"]["nospec"]["ratio"] is None
    assert "n/a: nospec's goodput under SLO is 0" in done.stdout
    assert "/ nospec n/a" in done.stdout
    # Every replay was logged as it finished, beside the JSON.
    lines = out.with_suffix(".replays.jsonl").read_text().splitlines()
    assert len(lines) == 9
    logged = [json.loads(line) for line in lines]
    assert {(x["controller"], x["repeat"]) for x in logged} == {
        (name, repeat) for name in ("nospec", "static:2", "goodput") for repeat in (1, 2, 3)
    }
    assert logged[0]["metrics"] == table["repeats"][logged[0]["controller"]][0]


def _metrics(goodput: float, under_slo: float) -> dict[str, float]:
    return {m: 0.5 for m in METRICS} | {
        "goodput_tps": goodput,
        "goodput_under_slo_tps": under_slo,
    }


def _run(name: str, goodput: float, under_slo: float) -> Run:
    return Run(parse_controller(name, k_max=4), metrics=[_metrics(goodput, under_slo)])


def test_table_marks_ratios_to_a_zero_reference_undefined():
    rows = table([_run("nospec", 100, 0), _run("static:2", 0, 0), _run("goodput", 150, 30)])
    goodput = rows[-1]
    assert goodput["goodput_vs_nospec"] == pytest.approx(1.5)
    for column in ("goodput_vs_best_static", "under_slo_vs_best_static", "under_slo_vs_nospec"):
        assert goodput[column] is None
    assert goodput["undefined"] == {
        "goodput_vs_best_static": "the best static k's goodput is 0",
        "under_slo_vs_best_static": "the best static k's goodput under SLO is 0",
        "under_slo_vs_nospec": "nospec's goodput under SLO is 0",
    }
    text = format_table(rows)
    assert text.splitlines()[2].split()[-3:] == ["n/a", "n/a", "n/a"]
    assert "n/a: the best static k's goodput is 0" in text
    assert text.count("n/a: nospec's goodput under SLO is 0") == 1
    json.dumps(rows, allow_nan=False)  # null, not NaN, in the JSON


def test_table_marks_ratios_to_a_missing_reference_undefined():
    rows = table([_run("static:2", 100, 50), _run("goodput", 120, 60)])
    goodput = rows[-1]
    assert goodput["under_slo_vs_best_static"] == pytest.approx(1.2)
    assert goodput["under_slo_vs_nospec"] is None and goodput["goodput_vs_nospec"] is None
    assert goodput["undefined"] == {
        "goodput_vs_nospec": "nospec's goodput is missing",
        "under_slo_vs_nospec": "nospec's goodput under SLO is missing",
    }
    text = format_table(rows)
    assert "n/a: nospec's goodput under SLO is missing" in text
    assert "nospec's goodput is missing" not in text  # that column is not printed


class _FakeEngine:
    def __init__(self, config) -> None:
        self.config = config

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_failure_after_some_replays_still_reports_them(tmp_path, monkeypatch, capsys):
    calls = []

    def replay(replayer, workload, seed, controller=None, features=None):
        calls.append(controller)
        if len(calls) == 3:
            raise RuntimeError("engine died")
        return _metrics(100.0 * len(calls), 10.0), {"t": [], "k": [], "batch": [], "queue": []}

    monkeypatch.setattr(evaluate_module, "LiveEngine", _FakeEngine)
    monkeypatch.setattr(evaluate_module, "replay", replay)
    out = tmp_path / "table.json"
    argv = ["--trace", TINY_TRACE, "--window-s", "5", "--controllers", "nospec,static:2,static:3"]
    assert main([*argv, "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "RuntimeError: engine died" in captured.err
    assert "reporting the replays that finished" in captured.err
    # The two replays that finished are in the table, the JSON and the replays' JSONL.
    table = json.loads(out.read_text())
    assert [row["controller"] for row in table["rows"]] == ["nospec", "static:2"]
    assert table["error"] == "RuntimeError: engine died"
    assert "static:2 " in captured.out and "static:3 " not in captured.out.split("-----")[-1]
    logged = out.with_suffix(".replays.jsonl").read_text().splitlines()
    assert [json.loads(line)["controller"] for line in logged] == ["nospec", "static:2"]
