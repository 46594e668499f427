"""A short look at the environment: one trace window replayed at every static k.

    python -m training.demo [--method ngram|draft_model] [--window 10]

Builds one live engine, replays the same window of the built-in bursty trace once per k
(same requests, same prompts) and prints goodput, goodput under SLO, SLO attainment and
latency percentiles per k: the landscape a learned controller has to beat.
"""

from __future__ import annotations

import argparse
import time

import gymnasium

import envs  # noqa: F401  (registers SpecDecode-v0)
from envs.config import EnvConfig
from serving.config import EngineConfig
from serving.live_engine import LiveEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="ngram", choices=("ngram", "draft_model"))
    parser.add_argument("--window", type=float, default=10.0, help="trace seconds to replay")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    engine = LiveEngine(EngineConfig(method=args.method))
    config = EnvConfig(engine=engine.config, window_s=args.window, window_start_s=0.0)
    env = gymnasium.make("SpecDecode-v0", config=config, engine=engine).unwrapped
    print(f"engine: {args.method}, k_max={engine.k_max}, start-up {engine.startup_seconds:.1f} s")
    print(f"trace: {config.trace}, window {args.window} s\n")
    print("k  steps  reward  goodput tok/s  under SLO  attainment  TTFT p50 ms  TPOT p50 ms")
    for k in range(engine.k_max + 1):
        env.reset(seed=args.seed)
        started, steps, total, done = time.perf_counter(), 0, 0.0, False
        while not done:
            _, reward, terminated, truncated, info = env.step(k)
            steps, total, done = steps + 1, total + reward, terminated or truncated
        m = info["episode_metrics"]
        print(
            f"{k}  {steps:5d}  {total:6.1f}  {m['goodput_tps']:13.0f}  "
            f"{m['goodput_under_slo_tps']:9.0f}  {m['slo_attainment']:10.2f}  "
            f"{m['ttft_p50_s'] * 1e3:11.1f}  {m['tpot_p50_s'] * 1e3:11.1f}"
            f"   ({time.perf_counter() - started:.1f} s)"
        )
    engine.close()


if __name__ == "__main__":
    main()
