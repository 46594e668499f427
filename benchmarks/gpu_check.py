"""`python -m benchmarks.gpu_check`: the async hook served on a GPU, checked in minutes, offline.

For a host with a CUDA build of vLLM (`pip install -e ".[gpu,dev]"`) and the small model
pair in `checkpoints/lm/`. It starts four servers on 127.0.0.1 at once, each with a share
of the GPU's memory and the same engine settings (the launcher's defaults for the pair,
draft-model speculation at k_max, eager mode, prefix caching off):

- `plain`: stock vLLM's server (`benchmarks.stock_server`, what `vllm serve` runs) without
  speculation, whose greedy outputs are the reference;
- `stock`: stock vLLM's server with the speculation, scheduled as vLLM chooses (on a GPU:
  asynchronously);
- `static`: `python -m serving.launch --async-scheduling --controller static:K`, the async
  hook at stock's k;
- `goodput`: `python -m serving.launch --async-scheduling`, the goodput controller choosing
  k at every step (its profile is the pair's CPU-measured one, so its choices say that the
  controller runs, not what is best on this GPU).

Then it sends every server the same greedy completions (token-id prompts from the
project's prompt factory, EOS ignored) in `--rounds` rounds of `--requests` concurrent
requests, the servers taking turns round by round so that drift hits them alike, and
checks: both hooked servers run `AsyncServingScheduler` under async scheduling (their
`turbospec:scheduler_info`), every server's outputs equal the plain engine's, and the hook
costs at most `--max-overhead` (the median round's wall time, `static` over `stock`). It
prints the k the goodput controller chose (`turbospec:k_chosen`) and exits 0 when every
check passes, 1 when one fails, 2 on a platform that schedules synchronously (the CPU).
Nothing is downloaded: the models are local and `HF_HUB_OFFLINE` is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from agents.paths import LM_DIR
from serving.config import EngineConfig

SERVERS = ("plain", "stock", "static", "goodput")
"""The servers the check starts, in the order their rows are printed (see the module)."""
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
"""No hub look-ups and no usage reports: the check needs no network."""


def build_parser() -> argparse.ArgumentParser:
    """The check's options."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens (k_max), 1..6")
    parser.add_argument("--requests", type=int, default=32, help="concurrent requests a round")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="tokens per prompt")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per server")
    parser.add_argument(
        "--max-overhead",
        type=float,
        default=1.05,
        help="the largest hooked/stock ratio of median round times that passes",
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.2,
        help="each server's share of the GPU's memory (four run at once)",
    )
    parser.add_argument(
        "--startup-timeout-s", type=float, default=300.0, help="seconds a server may take"
    )
    parser.add_argument(
        "--log-dir", help="where the servers' logs go (default: a new temporary folder, kept)"
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and check the options; exit 2 naming a value out of range."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if not 1 <= args.k <= 6:
        # turbospec:k_chosen has one bucket per k up to 6 (serving.metrics.K_BUCKETS).
        parser.error(f"--k {args.k} is outside 1..6")
    for name in ("requests", "prompt_tokens", "max_tokens", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 < args.gpu_memory_utilization <= 0.25:
        parser.error(
            f"--gpu-memory-utilization {args.gpu_memory_utilization} must lie in (0, 0.25]: "
            "four servers share the GPU"
        )
    if args.max_overhead < 1.0:
        parser.error(f"--max-overhead {args.max_overhead} must be >= 1")
    engine = EngineConfig(method="draft_model", k_max=args.k)
    if args.prompt_tokens + args.max_tokens > engine.max_model_len:
        parser.error(
            f"--prompt-tokens + --max-tokens = {args.prompt_tokens + args.max_tokens} exceeds "
            f"max_model_len {engine.max_model_len}"
        )
    return args


def server_commands(args: argparse.Namespace) -> dict[str, tuple[tuple[str, ...], list[str]]]:
    """Each server's `python -m` command and arguments: the same engine everywhere."""
    engine = EngineConfig(method="draft_model", k_max=args.k)
    common = [
        "--dtype", engine.dtype,
        "--max-model-len", str(engine.max_model_len),
        "--max-num-seqs", str(engine.max_num_seqs),
        "--max-num-batched-tokens", str(engine.max_num_batched_tokens),
        "--seed", str(engine.seed),
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--gpu-memory-utilization", str(args.gpu_memory_utilization),
        "--served-model-name", "turbospec-small",
    ]  # fmt: skip
    speculative = ["--speculative-config", json.dumps(engine.speculative_config())]
    stock, launcher = ("benchmarks.stock_server",), ("serving.launch",)
    common = ["--model", engine.model, *common]
    hooked = [*common, *speculative, "--async-scheduling"]
    return {
        "plain": (stock, common),
        "stock": (stock, [*common, *speculative]),
        "static": (launcher, [*hooked, "--controller", f"static:{args.k}"]),
        "goodput": (launcher, [*hooked, "--controller", "goodput"]),
    }


# --- what the check compares -----------------------------------------------------------------


@dataclass(frozen=True)
class Rounds:
    """One server's measured rounds."""

    texts: list[str]
    """The completions of the last round, in request order."""
    seconds: list[float]
    """Wall time of each round, from the first request sent to the last answer."""

    @property
    def median_s(self) -> float:
        """The median round's wall time."""
        return statistics.median(self.seconds)


def equal_outputs(reference: Sequence[str], texts: Sequence[str]) -> int:
    """How many completions equal the reference's, position by position."""
    if len(reference) != len(texts):
        raise ValueError(f"{len(texts)} completions to compare with {len(reference)}")
    return sum(a == b for a, b in zip(reference, texts, strict=True))


def k_counts(metrics_text: str) -> dict[int, int]:
    """Steps per k from a server's `turbospec:k_chosen` histogram (whole-number buckets)."""
    from prometheus_client.parser import text_string_to_metric_families

    cumulative: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "turbospec:k_chosen_bucket":
                cumulative[float(sample.labels["le"])] = sample.value
    counts, below = {}, 0.0
    for bound in sorted(b for b in cumulative if b != float("inf")):
        counts[int(bound)] = int(cumulative[bound] - below)
        below = cumulative[bound]
    return counts


def scheduler_of(metrics_text: str) -> tuple[str, str] | None:
    """(scheduler class, scheduling) a server reports in `turbospec:scheduler_info`, if any."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "turbospec:scheduler_info" and sample.value == 1:
                return sample.labels["scheduler"], sample.labels["scheduling"]
    return None


@dataclass(frozen=True)
class Report:
    """What the check found."""

    rounds: Mapping[str, Rounds]
    schedulers: Mapping[str, tuple[str, str] | None]
    """The hooked servers' scheduler class and scheduling."""
    k_chosen: Mapping[int, int]
    max_overhead: float

    @property
    def overhead(self) -> float:
        """The hook's cost: the static server's median round over stock's."""
        return self.rounds["static"].median_s / self.rounds["stock"].median_s

    def failures(self) -> list[str]:
        """Every check that failed, in words (none: the check passes)."""
        failed = []
        for name, scheduler in self.schedulers.items():
            if scheduler is None:
                failed.append(f"{name} reports no hook")
            elif scheduler != ("AsyncServingScheduler", "async"):
                failed.append(f"{name} runs {scheduler[0]} ({scheduler[1]} scheduling), not async")
        reference = self.rounds["plain"].texts
        for name in SERVERS[1:]:
            equal = equal_outputs(reference, self.rounds[name].texts)
            if equal != len(reference):
                failed.append(f"{name}: {len(reference) - equal} outputs differ from plain")
        if self.overhead > self.max_overhead:
            failed.append(f"hook overhead {self.overhead:.3f} > {self.max_overhead}")
        if not sum(self.k_chosen.values()):
            failed.append("the goodput controller chose no k")
        return failed

    def lines(self) -> list[str]:
        """The printed report."""
        reference = self.rounds["plain"].texts
        out = ["server    median round   rounds (s)                 outputs = plain"]
        for name in SERVERS:
            r = self.rounds[name]
            equal = equal_outputs(reference, r.texts)
            times = " ".join(f"{s:.3f}" for s in r.seconds)
            out.append(f"{name:<9} {r.median_s:>9.3f} s   {times:<26} {equal}/{len(reference)}")
        for name, scheduler in self.schedulers.items():
            shown = f"{scheduler[0]} ({scheduler[1]} scheduling)" if scheduler else "no hook"
            out.append(f"{name} runs {shown}")
        out.append(
            f"hook overhead (static / stock, median round): {self.overhead:.3f} "
            f"(pass: <= {self.max_overhead})"
        )
        steps = sum(self.k_chosen.values())
        if steps:
            mean = sum(k * n for k, n in self.k_chosen.items()) / steps
            shares = ", ".join(f"k={k}: {n}" for k, n in sorted(self.k_chosen.items()) if n)
            out.append(f"k chosen by goodput over {steps} steps: {shares} (mean {mean:.2f})")
        failed = self.failures()
        out.append("PASS" if not failed else "FAIL: " + "; ".join(failed))
        return out


# --- running it -------------------------------------------------------------------------------


async def _round(url: str, prompts: Sequence[list[int]], max_tokens: int) -> tuple[list, float]:
    import httpx

    from serving.server_process import completion_request

    async with httpx.AsyncClient(timeout=300) as client:

        async def one(prompt: list[int]) -> str:
            response = await client.post(
                f"{url}/v1/completions", json=completion_request(prompt, max_tokens)
            )
            response.raise_for_status()
            return response.json()["choices"][0]["text"]

        started = time.perf_counter()
        texts = await asyncio.gather(*(one(p) for p in prompts))
        return list(texts), time.perf_counter() - started


def run(args: argparse.Namespace, log_dir: Path) -> Report:
    """Start the servers, send the rounds, read the metrics (see the module)."""
    from envs.traces import PromptFactory
    from serving.server_process import ServerProcess

    factory = PromptFactory(LM_DIR / "target", seed=0)
    prompts = [factory.make(args.prompt_tokens).token_ids for _ in range(args.requests)]
    with ExitStack() as stack:
        servers = {}
        for name, (command, server_args) in server_commands(args).items():
            servers[name] = server = ServerProcess(
                server_args,
                command=command,
                log_path=log_dir / f"{name}.log",
                env=OFFLINE_ENV,
                startup_timeout_s=args.startup_timeout_s,
            )
            stack.callback(server.stop)
        for server in servers.values():  # all four start at once
            server.wait_ready()
        print(f"servers up: {', '.join(f'{n} {s.url}' for n, s in servers.items())}", flush=True)
        for server in servers.values():  # the first requests pay for warm-up
            asyncio.run(_round(server.url, prompts[:4], args.max_tokens))
        seconds: dict[str, list[float]] = {name: [] for name in servers}
        texts: dict[str, list[str]] = {}
        for _ in range(args.rounds):
            for name, server in servers.items():
                texts[name], elapsed = asyncio.run(_round(server.url, prompts, args.max_tokens))
                seconds[name].append(elapsed)
        metrics = {name: servers[name].metrics() for name in ("static", "goodput")}
    return Report(
        rounds={name: Rounds(texts[name], seconds[name]) for name in SERVERS},
        schedulers={name: scheduler_of(text) for name, text in metrics.items()},
        k_chosen=k_counts(metrics["goodput"]),
        max_overhead=args.max_overhead,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 0 when it passes, 1 when it fails, 2 where it cannot run."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from serving.scheduler_choice import platform_schedules_async

    if not platform_schedules_async():
        print(
            "gpu_check: vLLM's platform here schedules synchronously (a CPU build of vLLM); "
            'it needs a CUDA build: pip install -e ".[gpu,dev]"',
            file=sys.stderr,
        )
        return 2
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="turbospec-gpu-check-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = run(args, log_dir)
    print(
        f"draft_model speculation at k={args.k}; {args.rounds} rounds of {args.requests} "
        f"requests ({args.prompt_tokens} prompt, {args.max_tokens} output tokens); "
        f"{time.perf_counter() - started:.0f} s in all; logs: {log_dir}"
    )
    print("\n".join(report.lines()))
    return 0 if not report.failures() else 1


if __name__ == "__main__":
    sys.exit(main())
