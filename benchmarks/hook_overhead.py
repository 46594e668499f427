"""What the scheduler hook costs: plain vLLM vs the hooked engine, same requests, same k.

Two engines live in this process: vLLM's stock scheduler configured with a static k, and
the hook (`SpecControlScheduler`) with a static controller at the same k, choosing it
through the feature builder every step as serving does. Their steps alternate, one each,
on identical greedy requests, so both see the same drafts and acceptances and the
machine's drift hits both alike. Printed per batch size: the median decode-step time of
each and the ratio hooked/plain (target <= 1.02). Then the hooked engine's step time and
goodput for every k at each batch size: verification cost grows with k and batch size.

    python -m benchmarks.hook_overhead [--method ngram] [--k 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from agents.features import FeatureBuilder, FeatureConfig
from agents.paths import LM_DIR
from agents.static import StaticController
from envs.traces import PromptFactory
from serving.config import EngineConfig
from serving.live_engine import LiveEngine

BATCH_SIZES = (1, 8, 32)
PROMPT_TOKENS = 64
OUTPUT_TOKENS = 96


def add_batch(engines: list[LiveEngine], factory: PromptFactory, tag: str, size: int) -> None:
    """Give every engine the same `size` requests."""
    for i in range(size):
        prompt = factory.make(PROMPT_TOKENS, style="source").token_ids
        for engine in engines:
            engine.add_request(f"{tag}-{i}", prompt, OUTPUT_TOKENS)


def timed_step(engine: LiveEngine, k: int | None = None) -> float:
    """One engine step, timed from outside the same way for both engines."""
    started = time.perf_counter()
    if engine.scheduler is None:
        engine.step_plain()
    else:
        engine.step(k)
    return time.perf_counter() - started


def overhead(plain: LiveEngine, hooked: LiveEngine, factory, size: int, rounds: int):
    """Median decode-step times (plain, hooked) with the two engines' steps alternating."""
    times: dict[str, list[float]] = {"plain": [], "hooked": []}
    for r in range(rounds):
        add_batch([plain, hooked], factory, f"o{size}-{r}", size)
        step = 0
        while plain.has_unfinished() or hooked.has_unfinished():
            # Alternate which engine goes first, so neither always runs on a warmer cache.
            order = [("plain", plain), ("hooked", hooked)]
            for name, engine in order if step % 2 == 0 else order[::-1]:
                if engine.has_unfinished():
                    elapsed = timed_step(engine)
                    if step >= 2:  # the first steps prefill
                        times[name].append(elapsed)
            step += 1
    return statistics.median(times["plain"]), statistics.median(times["hooked"])


def k_profile(hooked: LiveEngine, factory, size: int, rounds: int) -> list[tuple[float, float]]:
    """(median step time, generated tokens per second) for every k at one batch size."""
    profile = []
    for k in range(hooked.k_max + 1):
        times, generated = [], 0
        for r in range(rounds):
            add_batch([hooked], factory, f"k{k}-{size}-{r}", size)
            step = 0
            while hooked.has_unfinished():
                record = hooked.step(k)
                if step >= 2:
                    times.append(record.step_time)
                    generated += record.generated
                step += 1
        profile.append((statistics.median(times), generated / sum(times)))
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="ngram", choices=("ngram", "draft_model"))
    parser.add_argument("--k", type=int, default=4, help="the static k both engines run")
    parser.add_argument("--rounds", type=int, default=3, help="request batches per size")
    args = parser.parse_args()

    base = EngineConfig(
        method=args.method, k_max=args.k, max_num_seqs=max(BATCH_SIZES), max_model_len=512
    )
    factory = PromptFactory(LM_DIR / "target", seed=0)
    plain = LiveEngine(base, plain=True)
    hooked = LiveEngine(replace(base))
    features = FeatureBuilder(
        FeatureConfig(
            k_max=base.k_max,
            max_num_seqs=base.max_num_seqs,
            max_num_batched_tokens=base.max_num_batched_tokens,
            ttft_slo_s=1.0,
            tpot_slo_s=0.1,
        )
    )
    hooked.attach(StaticController(args.k), features)
    print(f"method={args.method} k={args.k} prompt={PROMPT_TOKENS} output={OUTPUT_TOKENS} tokens")
    startup = f"plain {plain.startup_seconds:.1f} s, hooked {hooked.startup_seconds:.1f} s"
    print(f"engine start-up: {startup}")
    add_batch([plain, hooked], factory, "warmup", 4)
    while plain.has_unfinished() or hooked.has_unfinished():
        for engine in (plain, hooked):
            if engine.has_unfinished():
                timed_step(engine)

    print("\nbatch  plain ms  hooked ms  hooked/plain")
    for size in BATCH_SIZES:
        plain_s, hooked_s = overhead(plain, hooked, factory, size, args.rounds)
        print(f"{size:>5}  {plain_s * 1e3:8.2f}  {hooked_s * 1e3:9.2f}  {hooked_s / plain_s:12.3f}")

    hooked.attach(None, None)
    header = "  ".join(f"k={k:<2} ms tok/ms" for k in range(args.k + 1))
    print(f"\nhooked engine, decode steps, by k\nbatch  {header}")
    for size in BATCH_SIZES:
        cells = k_profile(hooked, factory, size, args.rounds)
        row = "  ".join(f"{t * 1e3:6.2f} {g / 1e3:6.2f}" for t, g in cells)
        print(f"{size:>5}  {row}")
    # Closing one engine tears down vLLM's process-wide state: close them together, last.
    plain.close()
    hooked.close()


if __name__ == "__main__":
    main()
