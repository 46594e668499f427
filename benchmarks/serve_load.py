"""`python -m benchmarks.serve_load`: a trace window sent to the server as timed HTTP requests.

For each controller, one server is launched (`python -m serving.launch --controller NAME`,
the same server arguments otherwise), warmed up, and sent the window's requests at their
trace arrival times as streaming completions of exactly the trace's output length. Latency
is measured at the client: TTFT is the time to the first streamed token, TPOT the time per
token after it. A request meets the SLO when both are within their objectives. Each server
replays the window `--repeats` times; the table holds the means, side by side, with each
controller's goodput under SLO relative to the analytic controller's (`n/a`, with the reason,
when the analytic controller did not run or scored 0).

    python -m benchmarks.serve_load --controllers guarded:checkpoints/policies/ngram,goodput,nospec
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import httpx
import numpy as np

from agents.paths import LM_DIR, PROJECT_ROOT, SHIPPED_POLICY
from envs.config import EnvConfig
from envs.ledger import SLO
from envs.traces import PromptFactory, Trace, apply_replay, load_trace
from serving.server_process import ServerProcess, completion_request, stream_chunk
from training.cli import deprecated_alias
from training.ratio import UNDEFINED, format_ratio, ratio

AZURE_CONV = "../shared/traces/AzureLLMInferenceTrace_conv.csv"
DEFAULT_CONTROLLERS = (
    f"guarded:{SHIPPED_POLICY.relative_to(PROJECT_ROOT)},"
    "goodput,static:1,static:2,static:3,static:4,nospec"
)


@dataclass
class Outcome:
    """One request as the client saw it."""

    ok: bool
    tokens: int = 0
    ttft_s: float = float("nan")
    tpot_s: float = float("nan")


async def send(
    client: httpx.AsyncClient, url: str, prompt: list[int], max_tokens: int, delay_s: float
) -> Outcome:
    """Wait `delay_s`, then stream one greedy completion and time its tokens."""
    await asyncio.sleep(delay_s)
    body = completion_request(prompt, max_tokens, stream=True)
    sent = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                return Outcome(False)
            async for line in response.aiter_lines():
                chunk = stream_chunk(line)
                if chunk is None:
                    continue
                if chunk.get("choices"):
                    last = time.perf_counter()
                    first = first or last
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError:
        return Outcome(False)
    if first is None:
        return Outcome(False)
    tpot = (last - first) / (tokens - 1) if tokens > 1 else 0.0
    return Outcome(tokens == max_tokens, tokens, first - sent, tpot)


async def replay(url: str, workload: Trace, prompts: list[list[int]]) -> tuple[list, float]:
    """Send every request at its arrival time; return the outcomes and the makespan."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(
                send(client, url, prompt, request.output_tokens, request.arrival_s)
                for request, prompt in zip(workload.requests, prompts, strict=True)
            )
        )
        return outcomes, time.perf_counter() - started


def summarize(outcomes: list[Outcome], makespan_s: float, slo: SLO) -> dict[str, float]:
    """Throughput, goodput under SLO, attainment and latency percentiles of one replay."""
    done = [o for o in outcomes if o.ok]
    met = [o for o in done if o.ttft_s <= slo.ttft_s and o.tpot_s <= slo.tpot_s]
    ttft = [o.ttft_s for o in done]
    tpot = [o.tpot_s for o in done if o.tokens > 1]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    return {
        "requests": len(outcomes),
        "failed": len(outcomes) - len(done),
        "throughput_tps": sum(o.tokens for o in done) / makespan_s,
        "goodput_under_slo_tps": sum(o.tokens for o in met) / makespan_s,
        "slo_attainment": len(met) / len(outcomes),
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p99_s": pct(ttft, 99),
        "tpot_p50_s": pct(tpot, 50),
        "tpot_p99_s": pct(tpot, 99),
        "makespan_s": makespan_s,
    }


def warm_up(url: str) -> None:
    """A few requests of every length class, so the first replayed ones do not pay for it."""
    with httpx.Client(timeout=120) as client:
        for prompt_len, out in ((16, 16), (256, 64), (384, 128)):
            body = completion_request([11] * prompt_len, out)
            client.post(f"{url}/v1/completions", json=body).raise_for_status()


def _shorten(name: str, width: int) -> str:
    return name if len(name) <= width else "..." + name[3 - width :]


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each row's goodput under SLO relative to the goodput controller's, None if undefined.

    The reason of an undefined ratio goes under the row's "undefined".
    """
    base = next((r for r in rows if r["controller"] == "goodput"), None)
    reference = base["goodput_under_slo_tps"] if base else None
    for row in rows:
        value, why = ratio(
            row["goodput_under_slo_tps"], reference, "the goodput controller's goodput under SLO"
        )
        row["under_slo_vs_goodput"] = value
        row["undefined"] = {} if why is None else {"under_slo_vs_goodput": why}
    return rows


def format_rows(rows: list[dict]) -> str:
    """The side-by-side table (of rows with their ratios, `add_ratios`) as text."""
    head = (
        f"{'controller':<44} {'tok/s':>7} {'SLO tok/s':>9} {'attain':>6} {'TTFT50':>7} "
        f"{'TTFT99':>7} {'TPOT50':>7} {'TPOT99':>7} {'failed':>6} {'slo/goodput':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{_shorten(r['controller'], 44):<44} {r['throughput_tps']:7.0f} "
            f"{r['goodput_under_slo_tps']:9.0f} {r['slo_attainment']:6.3f} "
            f"{r['ttft_p50_s']:7.3f} {r['ttft_p99_s']:7.3f} {r['tpot_p50_s']:7.4f} "
            f"{r['tpot_p99_s']:7.4f} {r['failed']:6.0f} "
            f"{format_ratio(r['under_slo_vs_goodput'], 11)}"
        )
    reasons = dict.fromkeys(why for r in rows for why in r["undefined"].values())
    lines += [f"{UNDEFINED}: {why}" for why in reasons]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", default=AZURE_CONV, help="trace file or synthetic: spec")
    window = parser.add_argument(
        "--window-s", type=float, default=30.0, help="trace seconds to replay"
    )
    deprecated_alias(parser, window, "--window")
    start = parser.add_argument(
        "--window-start-s", type=float, default=3000.0, help="trace second the window starts at"
    )
    deprecated_alias(parser, start, "--window-start")
    parser.add_argument("--rate-scale", type=float, default=2.0)
    parser.add_argument("--controllers", default=DEFAULT_CONTROLLERS, help="comma-separated")
    parser.add_argument("--repeats", type=int, default=2, help="replays per controller")
    parser.add_argument("--seed", type=int, default=0, help="prompt seed")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument(
        "--server-args", default="", help="more `serving.launch` arguments, one string"
    )
    args = parser.parse_args(argv)

    env = EnvConfig(
        trace=args.trace, window_s=args.window_s, window_start_s=args.window_start_s,
        rate_scale=args.rate_scale,
    )  # fmt: skip
    workload = apply_replay(load_trace(args.trace), env.replay_options(args.window_start_s))
    if not len(workload):
        parser.error(f"no requests in the {args.window_s} s window at {args.window_start_s} s")
    factory = PromptFactory(LM_DIR / "target", seed=args.seed, weights=env.prompt_styles)
    prompts = [factory.make(r.input_tokens).token_ids for r in workload.requests]
    tokens = sum(r.output_tokens for r in workload.requests)
    print(
        f"{workload.name}: {len(workload)} requests, {tokens} output tokens in "
        f"{args.window_s / args.rate_scale:.0f} s",
        flush=True,
    )

    rows = []
    logs = Path(tempfile.mkdtemp(prefix="serve_load-"))
    for i, name in enumerate(args.controllers.split(",")):
        server_args = ["--controller", name, *args.server_args.split()]
        with ServerProcess(server_args, log_path=logs / f"server-{i}.log") as server:
            warm_up(server.url)
            replays = [
                summarize(*asyncio.run(replay(server.url, workload, prompts)), env.slo)
                for _ in range(args.repeats)
            ]
        rows.append(
            {"controller": name} | {key: mean(r[key] for r in replays) for key in replays[0]}
        )
        print(
            f"  {name}: {rows[-1]['goodput_under_slo_tps']:.0f} tok/s under SLO, "
            f"attainment {rows[-1]['slo_attainment']:.3f}",
            flush=True,
        )
    print(format_rows(add_ratios(rows)))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "args": vars(args) | {"json": None}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
