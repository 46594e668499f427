"""`python -m training.evaluate`: real side-by-side runs on both clocks, tables that repeat in
model time, bad input refused up front, and undefined ratios and late failures reported,
never lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import training.evaluate as evaluate_module
from agents.registry import parse_controller
from tests.conftest import TEST_FLAGS
from training.bootstrap import ratio_interval
from training.evaluate import main
from training.evaluation.compare import METRICS, comparisons, table
from training.evaluation.report import format_table
from training.evaluation.runs import Run
from training.replays import Replay

ROOT = Path(__file__).resolve().parents[1]
TINY_TRACE = "synthetic:poisson?rate=6&duration=12&input_mean=48&output_mean=24&seed=4"


def evaluate(capsys, engines, *args: str) -> str:
    """What the command printed, run in-process on the session's engines (exit status 0)."""
    status = main(["--trace", TINY_TRACE, *TEST_FLAGS, *args], engines=engines)
    out = capsys.readouterr()
    assert status == 0, out.err[-3000:]
    return out.out


def tables(stdout: str) -> str:
    """What a run printed but its progress lines and timings."""
    return "\n".join(
        line for line in stdout.splitlines() if not line.startswith("  ") and "min of" not in line
    )


@pytest.mark.engine
def test_windows_side_by_side_in_model_time_and_the_tables_repeat(tmp_path, capsys, live_engines):
    out = tmp_path / "table.json"
    args = [
        "--windows", "0,4,8", "--window-s", "3",
        "--controllers", "nospec,static:0,static:3,goodput,oracle",
        "--json", str(out), "--plot", str(tmp_path / "plot.png"),
    ]  # fmt: skip
    done = evaluate(capsys, live_engines, *args)
    assert "model clock" in done and "gap closed" in done and "regime (engine-time" in done
    record = json.loads(out.read_text())
    (label,) = record["traces"]
    result = record["traces"][label]
    rows = {row["controller"]: row for row in result["rows"]}
    assert list(rows) == ["nospec", "static:0", "static:3", "goodput", "oracle"]
    assert rows["static:0"]["mean_k"] == 0 and rows["static:3"]["mean_k"] == 3
    assert [s["window_start_s"] for s in result["samples"]] == [0.0, 4.0, 8.0]
    per_sample = {
        n: [m["goodput_under_slo_tps"] for m in ms] for n, ms in result["metrics"].items()
    }
    assert all(len(v) == 3 and min(v) > 0 for v in per_sample.values())
    # Comparisons: geometric means of per-window ratios with paired intervals over windows.
    found = result["comparisons"]["goodput"]["best_static"]
    expected = ratio_interval(
        per_sample["goodput"], [per_sample["static:0"], per_sample["static:3"]], geometric=True
    )
    assert found == pytest.approx(vars(expected))
    assert (tmp_path / "plot.png").stat().st_size > 10_000

    # Model time: the same command prints the same tables.
    again = evaluate(capsys, live_engines, *args[:-4])
    assert tables(again).split("== ", 1)[1] == tables(done).split("== ", 1)[1]

    # On the twins (nospec's too): the same tables again.
    twin = evaluate(capsys, live_engines, *args[:-4], "--twin")
    assert "ngram (twin), model clock" in twin
    assert tables(twin).split("== ", 1)[1] == tables(done).split("== ", 1)[1]


@pytest.mark.engine
def test_draft_model_tables_repeat_in_model_time(capsys, live_engines):
    args = ["--method", "draft_model", "--window-s", "3", "--controllers", "static:1,goodput"]
    first = evaluate(capsys, live_engines, *args)
    second = evaluate(capsys, live_engines, *args)
    assert tables(first).split("== ", 1)[1] == tables(second).split("== ", 1)[1]


@pytest.mark.engine
def test_wall_clock_repeats_with_paired_intervals(tmp_path, capsys, live_engines):
    out = tmp_path / "table.json"
    args = ["--clock", "wall", "--window-s", "3", "--repeats", "3",
            "--controllers", "nospec,static:2,goodput", "--json", str(out)]  # fmt: skip
    done = evaluate(capsys, live_engines, *args)
    result = next(iter(json.loads(out.read_text())["traces"].values()))
    assert [s["repeat"] for s in result["samples"]] == [1, 2, 3]
    assert "paired bootstrap interval over 3 samples" in done
    assert result["comparisons"]["goodput"]["nospec"]["low"] is not None


@pytest.mark.engine
def test_the_command_runs_in_a_process_of_its_own():
    # The one run through `python -m`: the entry point and its own engines.
    done = subprocess.run(
        [sys.executable, "-m", "training.evaluate", "--trace", TINY_TRACE, "--window-s", "3",
         "--max-num-seqs", "8", "--controllers", "static:2"],
        cwd=ROOT, env=os.environ | {"VLLM_LOGGING_LEVEL": "WARNING"}, capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "static:2" in done.stdout and "goodput, underSLO: tokens/s" in done.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--controllers", "static:2,turbo"], "unknown controller 'turbo'"),
        (["--controllers", "static:9"], "controller 'static:9': K must be a whole number in 0..4"),
        (["--profile", "/nonexistent/p.json"], "/nonexistent/p.json"),
        (["--profile", "tpu-v9"], "no profile 'tpu-v9'"),
        (["--profile", "draft_model"], "made for method 'draft_model', not 'ngram'"),
        (["--clock", "sundial"], "unknown clock 'sundial'; expected one of wall, model"),
        (["--clock", "wall", "--controllers", "oracle"], "they need --clock model"),
        (["--repeats", "3"], "model-time replays repeat to the token"),
        (["--max-input-tokens", "1000"], "max_input_tokens + max_output_tokens = 1128 exceeds"),
        (["--trace", "/nonexistent/trace.csv"], "/nonexistent/trace.csv"),
        (["--window-start-s", "100000"], "window at 100000.0 s lies outside the trace"),
        (["--suite", "nope"], "unknown suite 'nope'"),
        (
            ["--trace", "../shared/traces/AzureLLMInferenceTrace_conv.csv", "--windows", "9,2800"],
            "overlaps its training region",
        ),
        (["--windows", "two"], "--windows two: give a count from 1 to 64"),
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
    assert "window at 100000.0 s lies outside the trace" in err
    assert "--window is deprecated and will be removed in the next release; use --window-s" in err
    assert "--window-start is deprecated" in err and "use --window-start-s" in err
    assert "--ttft-slo is deprecated" in err


@pytest.mark.engine
def test_an_slo_no_request_meets_still_gives_the_table_and_the_json(tmp_path, capsys, live_engines):
    # Every goodput under SLO is 0: each ratio to a reference under SLO is undefined.
    out = tmp_path / "table.json"
    args = ["--windows", "3", "--window-s", "3",
            "--controllers", "nospec,static:2,goodput", "--ttft-slo-s", "0.0001",
            "--json", str(out)]  # fmt: skip
    done = evaluate(capsys, live_engines, *args)
    record = json.loads(out.read_text())
    assert record["error"] is None
    result = next(iter(record["traces"].values()))
    for row in result["rows"]:
        assert row["goodput_under_slo_tps"] == 0 and row["goodput_tps"] > 0
        assert row["goodput_vs_best_static"] > 0
        assert row["under_slo_vs_best_static"] is None and row["under_slo_vs_nospec"] is None
        assert row["undefined"] == {
            "under_slo_vs_best_static": "the best static k's goodput under SLO is 0",
            "under_slo_vs_nospec": "nospec's goodput under SLO is 0",
        }
    assert result["comparisons"]["goodput"]["nospec"]["ratio"] is None
    assert "n/a: nospec's goodput under SLO is 0" in done
    assert "/ nospec n/a" in done
    # Every replay was logged as it finished, beside the JSON.
    logged = [json.loads(x) for x in out.with_suffix(".replays.jsonl").read_text().splitlines()]
    assert len(logged) == 9
    assert {x["controller"] for x in logged} == {"nospec", "static:2", "goodput"}
    assert logged[0]["metrics"] == result["metrics"][logged[0]["controller"]][0]


def _metrics(goodput: float, under_slo: float) -> dict[str, float]:
    return {m: 0.5 for m in METRICS} | {"goodput_tps": goodput, "goodput_under_slo_tps": under_slo}


def _run(name: str, *pairs: tuple[float, float]) -> Run:
    return Run(parse_controller(name, k_max=4), metrics=[_metrics(*pair) for pair in pairs])


def test_table_marks_ratios_to_a_zero_reference_undefined():
    rows = table([_run("nospec", (100, 0)), _run("static:2", (0, 0)), _run("goodput", (150, 30))])
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
    rows = table([_run("static:2", (100, 50)), _run("goodput", (120, 60))])
    goodput = rows[-1]
    assert goodput["under_slo_vs_best_static"] == pytest.approx(1.2)
    assert goodput["under_slo_vs_nospec"] is None and goodput["goodput_vs_nospec"] is None
    text = format_table(rows)
    assert "n/a: nospec's goodput under SLO is missing" in text
    assert "nospec's goodput is missing" not in text  # that column is not printed


def test_ratios_are_geometric_means_over_windows_and_the_gap_share_is_against_the_oracle():
    # Two windows: the controller gains 2x on one, loses 2x on the other: no gain overall.
    runs = [
        _run("static:2", (100, 100), (100, 100)),
        _run("goodput", (200, 200), (50, 50)),
        _run("oracle", (300, 300), (300, 300)),
    ]
    rows = {row["controller"]: row for row in table(runs)}
    assert rows["goodput"]["under_slo_vs_best_static"] == pytest.approx(1.0)
    found = comparisons(runs)
    assert found["goodput"]["best_static"]["ratio"] == pytest.approx(1.0)
    assert found["goodput"]["gap_closed"]["share"] == pytest.approx(0.0)
    assert found["oracle"]["gap_closed"]["share"] == pytest.approx(1.0)
    assert found["oracle"]["worst_vs_goodput"] == pytest.approx(1.5)


class _FakeBench:
    def __init__(self, env, profile, plain=False, engines=None) -> None:
        self.calls = 0

    def run(self, spec, workload, seed):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("engine died")
        metrics = _metrics(100.0 * self.calls, 10.0)
        return Replay(metrics, {"t": [], "k": [], "batch": [], "queue": [], "goodput": []}, {}, 1)

    def close(self) -> None:
        pass


def test_a_failure_after_some_replays_still_reports_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluate_module, "Bench", _FakeBench)
    out = tmp_path / "table.json"
    argv = ["--trace", TINY_TRACE, "--window-s", "5", "--controllers", "nospec,static:2,static:3"]
    assert main([*argv, "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert "RuntimeError: engine died" in captured.err
    assert "reporting the replays that finished" in captured.err
    # The two replays that finished are in the table, the JSON and the replays' JSONL.
    record = json.loads(out.read_text())
    rows = next(iter(record["traces"].values()))["rows"]
    assert [row["controller"] for row in rows] == ["nospec", "static:2"]
    assert record["error"] == "RuntimeError: engine died"
    logged = out.with_suffix(".replays.jsonl").read_text().splitlines()
    assert [json.loads(line)["controller"] for line in logged] == ["nospec", "static:2"]
