"""`python -m training.landscape` on the real engine: every static k at every rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.engine
def test_the_landscape_replays_every_static_k_at_every_rate(tmp_path):
    out = tmp_path / "landscape.json"
    args = [
        "--trace", "synthetic:poisson?rate=4&duration=6&input_mean=48&output_mean=24&seed=2",
        "--rates", "1,3", "--windows", "1", "--window-s", "3", "--k-max", "2",
        "--max-num-seqs", "8", "--extra", "", "--json", str(out),
        "--plot", str(tmp_path / "landscape.png"),
    ]  # fmt: skip
    env = os.environ | {"VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "training.landscape", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["rate_scale"] for row in rows] == [1.0, 3.0]
    assert rows[1]["requests_per_s"] > 2 * rows[0]["requests_per_s"]
    for row in rows:
        assert set(row["under_slo"]) == {"nospec", "static:0", "static:1", "static:2"}
        statics = {n: v for n, v in row["under_slo"].items() if n.startswith("static:")}
        assert row["best_static"] == max(statics, key=statics.get)
        assert all(v > 0 for v in row["goodput"].values())
    assert "best k" in done.stdout
    assert (tmp_path / "landscape.png").stat().st_size > 5_000
