"""`python -m training.landscape` on the real engine: every static k at every rate."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TEST_FLAGS
from training.landscape import main


@pytest.mark.engine
def test_the_landscape_replays_every_static_k_at_every_rate(tmp_path, live_engines, capsys):
    out = tmp_path / "landscape.json"
    args = [
        "--trace", "synthetic:poisson?rate=4&duration=6&input_mean=48&output_mean=24&seed=2",
        "--rates", "1,3", "--windows", "1", "--window-s", "3", *TEST_FLAGS,
        "--extra", "", "--json", str(out), "--plot", str(tmp_path / "landscape.png"),
    ]  # fmt: skip
    assert main(args, engines=live_engines) == 0, capsys.readouterr().err[-3000:]
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [row["rate_scale"] for row in rows] == [1.0, 3.0]
    assert rows[1]["requests_per_s"] > 2 * rows[0]["requests_per_s"]
    for row in rows:
        assert set(row["under_slo"]) == {"nospec", *(f"static:{k}" for k in range(5))}
        statics = {n: v for n, v in row["under_slo"].items() if n.startswith("static:")}
        assert row["best_static"] == max(statics, key=statics.get)
        assert all(v > 0 for v in row["goodput"].values())
    assert "best k" in printed
    assert (tmp_path / "landscape.png").stat().st_size > 5_000
