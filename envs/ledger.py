"""Per-request latency bookkeeping for one episode: SLO violations as they happen, and the
episode's metrics when it ends."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from agents.records import StepRecord
from agents.slo import SLO


@dataclass(frozen=True, slots=True)
class Violations:
    """SLO violations that one step caused."""

    ttft: int = 0
    """Requests whose wait for a first token crossed the TTFT SLO during the step."""
    tpot: int = 0
    """Requests whose time per output token so far crossed the TPOT SLO at the step's end."""


@dataclass(slots=True)
class _Entry:
    arrival: float
    output_tokens: int
    ttft_missed: bool = False
    tpot_missed: bool = False


class RequestLedger:
    """Tracks every request of an episode from arrival to finish, on the episode's clock."""

    def __init__(self, slo: SLO) -> None:
        self.slo = slo
        self._open: dict[str, _Entry] = {}
        self._deadlines: list[tuple[float, str]] = []  # TTFT deadlines of requests not started
        self._first_token: dict[str, float] = {}
        self._ttft: list[float] = []
        self._tpot: list[float] = []
        self._met: list[bool] = []
        self._tokens_met = 0
        self._tokens = 0
        self._busy_s = 0.0
        self._ks: list[int] = []

    def arrive(self, request_id: str, arrival: float, output_tokens: int) -> None:
        """Register a request added to the engine."""
        self._open[request_id] = _Entry(arrival, output_tokens)
        heapq.heappush(self._deadlines, (arrival + self.slo.ttft_s, request_id))

    def record(self, record: StepRecord) -> Violations:
        """Fold in one engine step; return the SLO violations it caused."""
        end = record.finished_at
        self._busy_s += record.step_time
        self._ks.append(record.k)
        tpot_crossed = 0
        for req in record.requests:
            self._tokens += req.generated
            if req.first_token_at is not None:
                self._first_token.setdefault(req.request_id, req.first_token_at)
            entry = self._open.get(req.request_id)
            if entry is None or entry.tpot_missed or req.output_tokens < 2:
                continue
            tpot = (end - req.first_token_at) / (req.output_tokens - 1)
            if tpot > self.slo.tpot_s:
                entry.tpot_missed = True
                tpot_crossed += 1

        ttft_crossed = 0
        while self._deadlines and self._deadlines[0][0] <= end:
            deadline, rid = heapq.heappop(self._deadlines)
            entry = self._open.get(rid)
            if entry is not None and self._first_token.get(rid, math.inf) > deadline:
                entry.ttft_missed = True
                ttft_crossed += 1

        for done in record.finished:
            entry = self._open.pop(done.request_id, None)
            self._first_token.pop(done.request_id, None)
            if entry is None:
                continue
            met = done.ttft <= self.slo.ttft_s and done.tpot <= self.slo.tpot_s
            self._ttft.append(done.ttft)
            self._tpot.append(done.tpot)
            self._met.append(met)
            self._tokens_met += done.output_tokens if met else 0
        return Violations(ttft=ttft_crossed, tpot=tpot_crossed)

    @property
    def num_open(self) -> int:
        """Requests registered and not finished."""
        return len(self._open)

    @property
    def num_finished(self) -> int:
        """Requests finished so far."""
        return len(self._met)

    def metrics(self) -> dict[str, float]:
        """The episode so far: goodput, goodput under SLO, latency percentiles, attainment."""
        busy = self._busy_s

        def pct(values: list[float], q: float) -> float:
            return float(np.percentile(values, q)) if values else float("nan")

        return {
            "requests_finished": float(len(self._met)),
            "tokens_generated": float(self._tokens),
            "busy_s": busy,
            "goodput_tps": self._tokens / busy if busy else 0.0,
            "goodput_under_slo_tps": self._tokens_met / busy if busy else 0.0,
            "slo_attainment": float(np.mean(self._met)) if self._met else float("nan"),
            "ttft_p50_s": pct(self._ttft, 50),
            "ttft_p99_s": pct(self._ttft, 99),
            "tpot_p50_s": pct(self._tpot, 50),
            "tpot_p99_s": pct(self._tpot, 99),
            "mean_k": float(np.mean(self._ks)) if self._ks else float("nan"),
        }
