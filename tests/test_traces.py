"""Tests for envs.traces: loaders, format errors, synthetic traces and replay options."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from envs.traces import (
    ReplayOptions,
    SyntheticSpec,
    Trace,
    TraceFormatError,
    TraceRequest,
    apply_replay,
    detect_format,
    load_trace,
    parse_synthetic,
    synthetic_trace,
)

SHARED_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
BURST_HEADER = (
    "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, newline="")
    return path


def rows(trace: Trace) -> list[tuple[float, int, int]]:
    return [(r.arrival_s, r.input_tokens, r.output_tokens) for r in trace.requests]


def arrivals(trace: Trace) -> np.ndarray:
    return np.array([r.arrival_s for r in trace.requests])


# --- data model ---


def test_from_rows_sorts_stably_and_starts_at_zero() -> None:
    trace = Trace.from_rows("t", "hand", [(12.0, 3, 4), (10.0, 1, 2), (12.0, 5, 6)])
    assert rows(trace) == [(0.0, 1, 2), (2.0, 3, 4), (2.0, 5, 6)]
    assert len(trace) == 3
    assert trace.duration_s == 2.0


def test_trace_rejects_unsorted_requests_and_bad_lengths() -> None:
    with pytest.raises(ValueError, match="not sorted"):
        Trace("t", "hand", (TraceRequest(1.0, 1, 1), TraceRequest(0.0, 1, 1)))
    with pytest.raises(ValueError, match=">= 1"):
        TraceRequest(0.0, 0, 1)
    with pytest.raises(ValueError, match="arrival_s"):
        TraceRequest(-1.0, 1, 1)


def test_empty_trace_has_zero_duration() -> None:
    trace = Trace.from_rows("t", "hand", [])
    assert len(trace) == 0
    assert trace.duration_s == 0.0


# --- loaders ---


def test_load_azure_exact_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "azure.csv",
        AZURE_HEADER.replace("\n", "\r\n")
        + "2023-11-16 18:15:46.6805900,374,44\r\n"
        + "2023-11-16 18:15:50.9951690,396,109\r\n"
        + "2023-11-16 18:16:00.0000000,10,1",
    )
    trace = load_trace(path, "azure")
    assert trace.name == "azure"
    assert trace.source == str(path)
    assert [r[1:] for r in rows(trace)] == [(374, 44), (396, 109), (10, 1)]
    assert arrivals(trace) == pytest.approx([0.0, 4.314579, 13.31941], abs=1e-9)


def test_load_azure_across_midnight_and_unsorted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "azure.csv",
        AZURE_HEADER
        + "2023-11-17 00:00:00.2500000,2,2\n"
        + "2023-11-16 23:59:59.5000000,1,1\n"
        + "2023-11-17 00:00:00.2500000,3,3\n",
    )
    trace = load_trace(path)
    assert rows(trace) == [(0.0, 1, 1), (0.75, 2, 2), (0.75, 3, 3)]


def test_load_burstgpt_drops_failed_requests(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "burst.csv",
        BURST_HEADER
        + "7.5,s2,0.0,GPT-4,50,0,50,Conversation log\n"
        + "5.0,s1,1.2,ChatGPT,100,20,120,Conversation log\n"
        + "6.25,s3,2.0,ChatGPT,30,10,40,API log\n"
        + "9.0,s4,0.0,ChatGPT,80,0,80,API log\n",
    )
    trace = load_trace(path, "burstgpt")
    assert rows(trace) == [(0.0, 100, 20), (1.25, 30, 10)]
    assert trace.dropped == 2
    assert trace.describe()["dropped"] == 2


def test_load_mooncake_milliseconds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mooncake.jsonl",
        '{"timestamp": 30535, "input_length": 6472, "output_length": 26, "hash_ids": []}\n'
        "\n"
        '{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [1, 2]}\n',
    )
    trace = load_trace(path, "mooncake")
    assert rows(trace) == [(0.0, 6955, 52), (pytest.approx(3.053), 6472, 26)]


@pytest.mark.parametrize(
    ("name", "text", "fmt"),
    [
        ("a.csv", AZURE_HEADER + "2023-11-16 18:15:46.6805900,374,44\n", "azure"),
        ("b.csv", BURST_HEADER + "1.0,s,0.1,ChatGPT,10,5,15,API log\n", "burstgpt"),
        ("c.jsonl", '{"timestamp": 1, "input_length": 2, "output_length": 3}\n', "mooncake"),
        ("d.jsonl", '\n{"timestamp": 1, "input_length": 2, "output_length": 3}\n', "mooncake"),
    ],
)
def test_format_detection(tmp_path: Path, name: str, text: str, fmt: str) -> None:
    path = write(tmp_path, name, text)
    assert detect_format(path) == fmt
    assert len(load_trace(path)) == 1


def test_unknown_format_name(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", AZURE_HEADER + "2023-11-16 18:15:46.6805900,374,44\n")
    with pytest.raises(TraceFormatError, match="parquet") as error:
        load_trace(path, "parquet")
    assert "a.csv" in str(error.value)
    assert "azure" in str(error.value)


def test_undetectable_format(tmp_path: Path) -> None:
    path = write(tmp_path, "weird.csv", "when,prompt,completion\n1,2,3\n")
    with pytest.raises(TraceFormatError, match="cannot detect") as error:
        load_trace(path)
    assert "weird.csv" in str(error.value)
    assert "line 1" in str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_trace(tmp_path / "nope.csv")


AZ_ROW = "2023-11-16 18:15:46.6805900,374,44\n"
BURST_ROW = "5.0,s1,1.2,ChatGPT,100,20,120,API log\n"
MOON_ROW = '{"timestamp": 1, "input_length": 2, "output_length": 3}\n'

BAD_INPUTS = [
    # (format, file text, line number in the message, another fragment of the message)
    ("azure", AZURE_HEADER + AZ_ROW + "2023-11-16 18:15:47.0,374\n", 3, "expected 3 fields"),
    ("azure", AZURE_HEADER + AZ_ROW + "2023-11-16 18:15:47.0,1,2,3\n", 3, "got 4"),
    ("azure", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.0,3\n", 1, "'GeneratedTokens'"),
    ("azure", AZURE_HEADER + AZ_ROW + AZ_ROW.replace("374", "-5"), 3, "'ContextTokens'"),
    ("azure", AZURE_HEADER + AZ_ROW.replace("374", "many"), 2, "'ContextTokens'"),
    ("azure", AZURE_HEADER + AZ_ROW.replace("374", "3.5"), 2, "'ContextTokens'"),
    ("azure", AZURE_HEADER + AZ_ROW.replace(",44", ",0"), 2, "'GeneratedTokens'"),
    ("azure", AZURE_HEADER + AZ_ROW.replace("2023-11-16", "yesterday"), 2, "'TIMESTAMP'"),
    ("azure", AZURE_HEADER + AZ_ROW.replace("2023-11-16", "2023-13-16"), 2, "invalid date"),
    ("azure", AZURE_HEADER + AZ_ROW.replace("18:15", "25:15"), 2, "time of day"),
    ("azure", "", 1, "empty file"),
    ("azure", AZURE_HEADER, 2, "no data rows"),
    ("burstgpt", BURST_HEADER + BURST_ROW + BURST_ROW.replace("5.0", "soon"), 3, "'Timestamp'"),
    ("burstgpt", BURST_HEADER + BURST_ROW.replace("5.0", "nan"), 2, "'Timestamp'"),
    ("burstgpt", BURST_HEADER + BURST_ROW.replace(",100,", ",0,"), 2, "'Request tokens'"),
    ("burstgpt", BURST_HEADER + BURST_ROW.replace(",20,", ",-1,"), 2, "'Response tokens'"),
    ("burstgpt", BURST_HEADER.replace(",Request tokens", ""), 1, "'Request tokens'"),
    ("burstgpt", BURST_HEADER + BURST_ROW.replace(",20,", ",0,"), 3, "all 1 requests failed"),
    ("mooncake", MOON_ROW + '{"timestamp": 2, "input_length": 2,\n', 2, "invalid JSON"),
    ("mooncake", MOON_ROW + MOON_ROW.replace(', "output_length": 3', ""), 2, "'output_length'"),
    ("mooncake", MOON_ROW.replace("1", '"soon"', 1), 1, "'timestamp'"),
    ("mooncake", MOON_ROW.replace(": 2", ": -2"), 1, "'input_length'"),
    ("mooncake", MOON_ROW.replace(": 3", ": true"), 1, "'output_length'"),
    ("mooncake", "\n\n[1, 2, 3]\n", 3, "JSON object"),
    ("mooncake", "", 1, "empty file"),
]


@pytest.mark.parametrize(("fmt", "text", "line", "fragment"), BAD_INPUTS)
def test_bad_input_names_file_and_line(
    tmp_path: Path, fmt: str, text: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, f"bad_{fmt}.txt", text)
    with pytest.raises(TraceFormatError) as error:
        load_trace(path, fmt)
    message = str(error.value)
    assert f"bad_{fmt}.txt" in message
    assert f"line {line}:" in message
    assert fragment in message
    assert error.value.line == line


def test_empty_file_detection_error(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.csv", "\n")
    with pytest.raises(TraceFormatError, match=r"empty\.csv, line 1: empty file"):
        load_trace(path)


# --- the real Azure traces ---


@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason="shared traces not present")
@pytest.mark.parametrize(
    ("name", "count"),
    # The files hold one more row than a `wc -l` count suggests: the last line has no newline.
    [("AzureLLMInferenceTrace_code.csv", 8_819), ("AzureLLMInferenceTrace_conv.csv", 19_366)],
)
def test_real_azure_traces(name: str, count: int) -> None:
    start = time.perf_counter()
    trace = load_trace(SHARED_TRACES / name)
    assert time.perf_counter() - start < 2.0
    assert len(trace) == count
    times = arrivals(trace)
    assert times[0] == 0.0
    assert np.all(np.diff(times) >= 0)
    assert 3000 < trace.duration_s < 3700
    assert min(r.input_tokens for r in trace.requests) >= 1
    assert min(r.output_tokens for r in trace.requests) >= 1


# --- synthetic traces ---


def cv(trace: Trace) -> float:
    gaps = np.diff(arrivals(trace))
    return float(gaps.std() / gaps.mean())


def test_synthetic_is_seeded() -> None:
    spec = SyntheticSpec("bursty", duration=100, rate=3, seed=7)
    assert synthetic_trace(spec) == synthetic_trace(spec)
    other = synthetic_trace(SyntheticSpec("bursty", duration=100, rate=3, seed=8))
    assert rows(other) != rows(synthetic_trace(spec))


def test_synthetic_lengths_do_not_move_arrivals() -> None:
    a = synthetic_trace(SyntheticSpec("poisson", input_mean=100, seed=3))
    b = synthetic_trace(SyntheticSpec("poisson", input_mean=900, seed=3))
    assert np.array_equal(arrivals(a), arrivals(b))


def test_poisson_rate_and_lengths() -> None:
    spec = SyntheticSpec("poisson", duration=500, rate=10, input_mean=256, output_mean=64)
    trace = synthetic_trace(spec)
    assert len(trace) / spec.duration == pytest.approx(10, rel=0.05)
    assert 0.9 < cv(trace) < 1.1
    inputs = np.array([r.input_tokens for r in trace.requests])
    outputs = np.array([r.output_tokens for r in trace.requests])
    assert inputs.mean() == pytest.approx(256, rel=0.05)
    assert outputs.mean() == pytest.approx(64, rel=0.05)
    assert inputs.min() >= 1
    assert inputs.max() <= spec.input_max
    assert outputs.max() <= spec.output_max


def test_bursty_is_overdispersed() -> None:
    trace = synthetic_trace(SyntheticSpec("bursty", duration=500, rate=5, cv=3))
    assert len(trace) / 500 == pytest.approx(5, rel=0.25)
    assert cv(trace) > 1.5


@pytest.mark.parametrize(("start", "end"), [(0.5, 8.0), (8.0, 0.0)])
def test_ramp_moves_arrivals_towards_the_higher_rate(start: float, end: float) -> None:
    trace = synthetic_trace(SyntheticSpec("ramp", duration=200, start_rate=start, end_rate=end))
    times = arrivals(trace)
    first_half = int(np.sum(times < 100))
    second_half = len(times) - first_half
    busier, quieter = (second_half, first_half) if end > start else (first_half, second_half)
    assert busier > 2 * quieter
    assert len(trace) == pytest.approx((start + end) / 2 * 200, rel=0.1)


def test_spec_string_round_trip_and_dispatch() -> None:
    text = "synthetic:ramp?start_rate=0.5&end_rate=8&duration=30&input_mean=64&seed=4"
    spec = parse_synthetic(text)
    assert spec == SyntheticSpec(
        "ramp", start_rate=0.5, end_rate=8, duration=30, input_mean=64, seed=4
    )
    assert parse_synthetic(spec.to_string()) == spec
    trace = load_trace(text)
    assert trace == synthetic_trace(spec)
    assert trace.source == spec.to_string()
    assert trace.name == "synthetic-ramp"
    assert parse_synthetic("synthetic:poisson") == SyntheticSpec("poisson")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("synthetic:wave?rate=1", "'wave'"),
        ("synthetic:poisson?burst=2", "'burst'"),
        ("synthetic:poisson?start_rate=1", "'start_rate'"),
        ("synthetic:poisson?rate=abc", "'rate'"),
        ("synthetic:poisson?rate=-1", "'rate'"),
        ("synthetic:poisson?duration=inf", "'duration'"),
        ("synthetic:poisson?seed=1.5", "'seed'"),
        ("synthetic:poisson?rate=1&rate=2", "given twice"),
        ("synthetic:poisson?rate", "key=value"),
        ("synthetic:ramp?start_rate=0&end_rate=0", "both be 0"),
        ("synthetic:poisson?input_mean=900&input_max=500", "input_max"),
    ],
)
def test_bad_synthetic_spec(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="synthetic") as error:
        load_trace(text)
    assert fragment in str(error.value)


# --- replay ---


HAND = Trace.from_rows(
    "hand", "hand", [(0.0, 100, 10), (1.0, 200, 20), (2.0, 300, 30), (3.0, 1, 1), (4.0, 5, 5)]
)


def test_default_replay_keeps_the_trace() -> None:
    replayed = apply_replay(HAND, ReplayOptions())
    assert replayed.requests == HAND.requests
    assert replayed.replay is not None
    assert replayed.replay.clipped_input == 0


def test_replay_window_rate_and_clipping() -> None:
    options = ReplayOptions(
        window_start_s=0.5,
        window_s=3.0,
        rate_scale=2.0,
        length_scale=1.5,
        max_input_tokens=400,
        max_output_tokens=40,
    )
    replayed = apply_replay(HAND, options)
    # Window [0.5, 3.5) holds the requests at 1, 2 and 3; times count from the window start.
    assert rows(replayed) == [(0.25, 300, 30), (0.75, 400, 40), (1.25, 2, 2)]
    record = replayed.describe()["replay"]
    assert record == {
        "window_start_s": 0.5,
        "window_s": 3.0,
        "rate_scale": 2.0,
        "max_input_tokens": 400,
        "max_output_tokens": 40,
        "length_scale": 1.5,
        "max_requests": None,
        "source_requests": 5,
        "window_requests": 3,
        "truncated_by_max_requests": 0,
        "requests": 3,
        "clipped_input": 1,
        "clipped_output": 1,
    }
    json.dumps(replayed.describe())


def test_replay_max_requests_and_rounding() -> None:
    replayed = apply_replay(
        HAND, ReplayOptions(window_start_s=1.0, max_requests=3, length_scale=0.5)
    )
    # Half-up rounding, never below one token.
    assert rows(replayed) == [(0.0, 100, 10), (1.0, 150, 15), (2.0, 1, 1)]
    assert replayed.replay is not None
    assert replayed.replay.as_dict()["truncated_by_max_requests"] == 1


def test_replay_empty_window() -> None:
    replayed = apply_replay(HAND, ReplayOptions(window_start_s=10.0, window_s=5.0))
    assert len(replayed) == 0
    assert replayed.duration_s == 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window_start_s", -1.0),
        ("window_start_s", float("nan")),
        ("window_s", 0.0),
        ("window_s", float("inf")),
        ("rate_scale", 0.0),
        ("rate_scale", -2.0),
        ("length_scale", 0.0),
        ("max_input_tokens", 0),
        ("max_output_tokens", 2.5),
        ("max_requests", 0),
    ],
)
def test_replay_option_validation(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ReplayOptions(**{field: value})


def test_a_periodic_ramp_rises_within_every_period():
    trace = load_trace(
        "synthetic:ramp?start_rate=1&end_rate=9&period=20&duration=400&input_mean=8&seed=3"
    )
    arrivals = np.array([r.arrival_s for r in trace.requests])
    # The first arrival (at about 1 s) moves to 0, so phases shift by about a second: compare
    # [2, 7) and [12, 17) of each period, mean rates about 3 and 7.
    phase = arrivals % 20
    early = np.count_nonzero((phase >= 2) & (phase < 7))
    late = np.count_nonzero((phase >= 12) & (phase < 17))
    assert 1.5 * early < late
    # The same load in every part of the trace.
    first, second = np.count_nonzero(arrivals < 200), np.count_nonzero(arrivals >= 200)
    assert abs(first - second) < 0.15 * len(arrivals)
    # Without a period the ramp spans the whole trace, as before.
    assert "period=0.0" in load_trace("synthetic:ramp?start_rate=1&end_rate=9").source
