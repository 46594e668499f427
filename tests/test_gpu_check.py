"""The GPU check's CPU-side parts: its options, the servers it starts, and what it prints.

The check itself (benchmarks/gpu_check.py) needs a CUDA build of vLLM and has not run here;
these tests run none of its servers.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from benchmarks.gpu_check import (
    Report,
    Rounds,
    equal_outputs,
    k_counts,
    main,
    parse_args,
    scheduler_of,
    server_commands,
)
from serving.metrics import K_BUCKETS

ASYNC_HOOK = ("AsyncServingScheduler", "async")


def test_defaults_fit_the_small_pair_and_four_servers():
    args = parse_args([])
    assert (args.k, args.requests, args.rounds, args.max_overhead) == (4, 32, 5, 1.05)
    assert args.gpu_memory_utilization * 4 <= 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--k", "7"], "--k 7 is outside 1..6"),
        (["--rounds", "0"], "--rounds must be >= 1, got 0"),
        (["--gpu-memory-utilization", "0.5"], "four servers share the GPU"),
        (["--max-overhead", "0.9"], "--max-overhead 0.9 must be >= 1"),
        (["--prompt-tokens", "1000"], "exceeds max_model_len 1024"),
    ],
)
def test_bad_options_exit_2_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_every_server_runs_the_same_engine_and_only_the_hooked_ones_name_a_controller():
    commands = server_commands(parse_args(["--k", "3"]))
    (plain_cmd, plain), (stock_cmd, stock) = commands["plain"], commands["stock"]
    assert plain_cmd == stock_cmd == ("benchmarks.stock_server",)
    assert commands["static"][0] == commands["goodput"][0] == ("serving.launch",)
    for name, (_, args) in commands.items():
        for option in ("--model", "--dtype", "--max-model-len", "--max-num-seqs", "--seed"):
            assert _option(args, option) == _option(plain, option), (name, option)
        assert "--enforce-eager" in args and "--port" not in args
    assert _option(plain, "--speculative-config") is None
    speculative = json.loads(_option(stock, "--speculative-config"))
    assert speculative["method"] == "draft_model" and speculative["num_speculative_tokens"] == 3
    for name in ("static", "goodput"):
        args = commands[name][1]
        assert json.loads(_option(args, "--speculative-config")) == speculative
        assert "--async-scheduling" in args
    assert "--async-scheduling" not in stock  # stock vLLM schedules as it chooses
    assert _option(commands["static"][1], "--controller") == "static:3"
    assert _option(commands["goodput"][1], "--controller") == "goodput"


def _metrics(ks: list[int], scheduler: tuple[str, str] | None = ASYNC_HOOK) -> str:
    """Prometheus text as a hooked server exports it, from a registry of our own."""
    registry = CollectorRegistry()
    histogram = Histogram("turbospec:k_chosen", "k", buckets=K_BUCKETS, registry=registry)
    for k in ks:
        histogram.observe(k)
    if scheduler is not None:
        info = Gauge("turbospec:scheduler_info", "s", ["scheduler", "scheduling"],
                     registry=registry)  # fmt: skip
        info.labels(*scheduler).set(1)
    return generate_latest(registry).decode()


def test_the_k_chosen_and_the_scheduler_are_read_from_the_metrics():
    text = _metrics([4, 4, 2, 0, 4])
    assert k_counts(text) == {0: 1, 1: 0, 2: 1, 3: 0, 4: 3, 5: 0, 6: 0, 8: 0, 12: 0, 16: 0}
    assert scheduler_of(text) == ASYNC_HOOK
    assert scheduler_of(_metrics([], scheduler=None)) is None


def test_outputs_are_compared_position_by_position():
    assert equal_outputs(["a", "b", "c"], ["a", "x", "c"]) == 2
    with pytest.raises(ValueError, match="2 completions to compare with 3"):
        equal_outputs(["a", "b", "c"], ["a", "b"])


def _report(**changes) -> Report:
    texts = ["x = 1", "def f():"]
    values = {
        "rounds": {
            "plain": Rounds(texts, [0.9, 1.0, 1.1]),
            "stock": Rounds(texts, [1.0, 1.2, 1.0]),
            "static": Rounds(texts, [1.02, 1.0, 1.03]),
            "goodput": Rounds(texts, [1.1, 1.1, 1.1]),
        },
        "schedulers": {"static": ASYNC_HOOK, "goodput": ASYNC_HOOK},
        "k_chosen": {2: 1, 4: 3},
        "max_overhead": 1.05,
    }
    return Report(**(values | changes))


def test_a_passing_report_prints_every_server_the_overhead_and_the_k_chosen():
    report = _report()
    assert report.overhead == pytest.approx(1.02 / 1.0)
    lines = report.lines()
    assert lines[1].split()[:3] == ["plain", "1.000", "s"] and lines[1].endswith("2/2")
    assert "static runs AsyncServingScheduler (async scheduling)" in lines
    assert "hook overhead (static / stock, median round): 1.020 (pass: <= 1.05)" in lines
    assert "k chosen by goodput over 4 steps: k=2: 1, k=4: 3 (mean 3.50)" in lines
    assert lines[-1] == "PASS" and report.failures() == []


def test_each_failed_check_is_named():
    rounds = _report().rounds
    differ = dict(rounds, goodput=Rounds(["x = 1", "def g():"], [1.0]))
    slow = dict(rounds, static=Rounds(rounds["static"].texts, [1.2, 1.3, 1.25]))
    cases = [
        ({"rounds": differ}, "goodput: 1 outputs differ from plain"),
        ({"rounds": slow}, "hook overhead 1.250 > 1.05"),
        ({"schedulers": {"static": ("ServingScheduler", "sync"), "goodput": ASYNC_HOOK}},
         "static runs ServingScheduler (sync scheduling), not async"),
        ({"schedulers": {"static": ASYNC_HOOK, "goodput": None}},
         "goodput reports no hook"),
        ({"k_chosen": {}}, "the goodput controller chose no k"),
    ]  # fmt: skip
    for changes, message in cases:
        report = _report(**changes)
        assert report.failures() == [message]
        assert report.lines()[-1] == f"FAIL: {message}"


def test_on_this_cpu_it_exits_2_before_starting_any_server(capsys):
    assert main(["--rounds", "1"]) == 2
    assert "needs a CUDA build" in capsys.readouterr().err
