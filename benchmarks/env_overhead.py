"""What the Gymnasium environment adds to a bare engine step.

An episode of `SpecDecode-v0` is replayed at a fixed k while every request the environment
adds is recorded with the step it was added before. The same requests are then pushed
through the bare `LiveEngine` loop (add, step) at the same steps. The two runs alternate
over repeats on one engine; printed: steps per second of each and the ratio of
environment to bare wall time (target: at most 1.10).

    python -m benchmarks.env_overhead [--method ngram] [--k 2] [--window-s 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium

import envs  # noqa: F401  (registers SpecDecode-v0)
from envs.config import EnvConfig
from serving.config import EngineConfig
from serving.live_engine import LiveEngine
from training.cli import deprecated_alias


def run_env(env, engine: LiveEngine, k: int, seed: int) -> tuple[float, int, list]:
    """One episode through the environment: (wall seconds, steps, admissions per step)."""
    admissions: list[list[tuple]] = [[]]
    add = engine.add_request

    def recording_add(request_id, prompt, output_tokens, **kwargs):
        admissions[-1].append((request_id, prompt, output_tokens, kwargs))
        add(request_id, prompt, output_tokens, **kwargs)

    engine.add_request = recording_add
    try:
        env.reset(seed=seed)
        started, steps, done = time.perf_counter(), 0, False
        while not done:
            admissions.append([])
            *_, terminated, truncated, _ = env.step(k)
            steps, done = steps + 1, terminated or truncated
        elapsed = time.perf_counter() - started
    finally:
        del engine.add_request
    # admissions[0] came with reset (outside the timed loop); admissions[i] followed step i.
    return elapsed, steps, admissions


def run_bare(engine: LiveEngine, k: int, admissions: list) -> tuple[float, int]:
    """The same requests through add_request/step alone: (wall seconds, steps)."""
    engine.reset()
    for request_id, prompt, output_tokens, kwargs in admissions[0]:
        engine.add_request(request_id, prompt, output_tokens, **kwargs)
    started, steps = time.perf_counter(), 0
    for batch in admissions[1:]:
        engine.step(k)
        steps += 1
        for request_id, prompt, output_tokens, kwargs in batch:
            engine.add_request(request_id, prompt, output_tokens, **kwargs)
    return time.perf_counter() - started, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="ngram", choices=("ngram", "draft_model"))
    parser.add_argument("--k", type=int, default=2)
    window = parser.add_argument(
        "--window-s", type=float, default=10.0, help="trace seconds per episode"
    )
    deprecated_alias(parser, window, "--window")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    engine = LiveEngine(EngineConfig(method=args.method))
    config = EnvConfig(engine=engine.config, window_s=args.window_s, window_start_s=0.0)
    env = gymnasium.make("SpecDecode-v0", config=config, engine=engine).unwrapped
    run_env(env, engine, args.k, seed=0)  # warm-up

    env_times, bare_times = [], []
    for _ in range(args.repeats):
        env_s, env_steps, admissions = run_env(env, engine, args.k, seed=0)
        bare_s, bare_steps = run_bare(engine, args.k, admissions)
        if bare_steps != env_steps:
            raise RuntimeError(f"bare loop ran {bare_steps} steps, the environment {env_steps}")
        env_times.append(env_s / env_steps)
        bare_times.append(bare_s / bare_steps)
    env_step, bare_step = statistics.median(env_times), statistics.median(bare_times)
    print(f"method={args.method} k={args.k} window={args.window_s} s, {env_steps} steps/episode")
    print(f"bare LiveEngine: {1 / bare_step:7.1f} steps/s ({bare_step * 1e3:.2f} ms/step)")
    print(f"environment:     {1 / env_step:7.1f} steps/s ({env_step * 1e3:.2f} ms/step)")
    print(f"environment / bare step time: {env_step / bare_step:.3f} (target <= 1.10)")
    engine.close()


if __name__ == "__main__":
    main()
