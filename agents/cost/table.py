"""`table`: the profiler's measured medians, interpolated (as TurboSpec's profiler does).

Decode steps are measured on a grid of batch size x k x prompt length; each cell records the
drafts actually verified per request and the mean context its steps read, because ngram
drafts fewer than k when nothing matches and contexts grow while a cell decodes. A step's
decode time is interpolated along verified drafts within each (batch, prompt) line, then
across the lines' mean contexts, then across batch sizes: piecewise linear, extended
linearly past the grid's edges. Prompt chunks add the time measured for them on top of a
decode-only step of the same batch, chunk by chunk: prefill cells time one prompt chunk each,
because attention makes a chunk's cost grow faster than its length, so two chunks of 400
tokens cost less than one of 800. A prefill-only step is its longest chunk's whole measured
step plus what the other chunks add beside one decoding request.

Unlike the linear fit this follows the measured shape, e.g. ngram steps that are almost flat
in k at small batches and steepen at large ones.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping, Sequence

from agents.cost.load import StepLoad
from agents.cost.model import MIN_STEP_S

DECODE_KEYS = ("batch", "k", "context", "verified", "mean_context", "step_time_s")
PREFILL_KEYS = ("batch", "prefill_tokens", "added_s")


def interpolate(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """Piecewise-linear y(x) through sorted, distinct xs, extended linearly past both ends."""
    n = len(xs)
    if n == 1:
        return ys[0]
    i = bisect_left(xs, x)
    i = 1 if i < 1 else n - 1 if i > n - 1 else i
    x0, x1 = xs[i - 1], xs[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)


def _dedupe(points: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
    """Points sorted by x, those with equal x merged by averaging the rest."""
    merged: dict[float, list[tuple[float, ...]]] = defaultdict(list)
    for point in points:
        merged[point[0]].append(point)
    return [
        (x, *(sum(p[j] for p in group) / len(group) for j in range(1, len(group[0]))))
        for x, group in sorted(merged.items())
    ]


class TableCost:
    """Step seconds interpolated from measured cells (format: `from_params`)."""

    kind = "table"

    def __init__(self, decode: Sequence[Mapping], prefill: Sequence[Mapping] = ()) -> None:
        if not decode:
            raise ValueError("a table cost model needs at least one decode cell")
        for cell in decode:
            _check_cell(cell, DECODE_KEYS, "decode")
        for cell in prefill:
            _check_cell(cell, PREFILL_KEYS, "prefill")
        self.decode = [dict(c) for c in decode]
        self.prefill = [dict(c) for c in prefill]
        # batch -> [(mean context of the line, verifieds, seconds, mean contexts)], per line.
        lines: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
        for cell in decode:
            lines[int(cell["batch"])][int(cell["context"])].append(
                (float(cell["verified"]), float(cell["step_time_s"]), float(cell["mean_context"]))
            )
        self._batches = sorted(lines)
        self._lines = []
        for batch in self._batches:
            per_context = []
            for _, points in sorted(lines[batch].items()):
                v, t, c = zip(*_dedupe(points), strict=True)
                per_context.append((v, t, c))
            self._lines.append(per_context)
        # batch -> (prompt tokens, added seconds), starting from (0, 0) for batches >= 1.
        added: dict[int, list] = defaultdict(list)
        for cell in prefill:
            added[int(cell["batch"])].append(
                (float(cell["prefill_tokens"]), float(cell["added_s"]))
            )
        self._prefill_only = None
        if 0 in added:
            p, t = zip(*_dedupe(added.pop(0)), strict=True)
            self._prefill_only = (p, t)
        self._prefill_batches = sorted(added)
        self._prefill_lines = []
        for batch in self._prefill_batches:
            p, t = zip(*_dedupe([(0.0, 0.0), *added[batch]]), strict=True)
            self._prefill_lines.append((p, t))

    @classmethod
    def from_params(cls, params: Mapping) -> TableCost:
        """From a profile's `cost` section: lists of "decode" and "prefill" cells."""
        if not isinstance(params, Mapping) or "decode" not in params:
            raise ValueError("table cost model lacks its decode cells")
        return cls(params["decode"], params.get("prefill", ()))

    def to_params(self) -> dict[str, list[dict]]:
        """The cells, as a profile file stores them."""
        return {"decode": self.decode, "prefill": self.prefill}

    def seconds(self, load: StepLoad) -> float:
        """Interpolated seconds of a step that computed `load`."""
        batch = load.num_decode
        chunks = sorted((tokens for tokens, _ in load.prefill), reverse=True)
        if batch:
            seconds = self._decode(batch, load.verified_tokens / batch, load.mean_context)
        elif chunks and self._prefill_only is not None:
            seconds = interpolate(chunks.pop(0), *self._prefill_only)
            batch = 1  # the other chunks add to it as to a step of one request
        else:
            seconds = self._decode(1, 0.0, 0.0)
            batch = 1
        if self._prefill_lines:
            seconds += sum(self._added(batch, tokens) for tokens in chunks)
        return seconds if seconds > MIN_STEP_S else MIN_STEP_S

    def _decode(self, batch: int, verified: float, context: float) -> float:
        def at_batch(index: int) -> float:
            times, contexts = [], []
            for v, t, c in self._lines[index]:
                times.append(interpolate(verified, v, t))
                contexts.append(interpolate(verified, v, c))
            if len(times) == 1:
                return times[0]
            order = sorted(range(len(times)), key=contexts.__getitem__)
            return interpolate(context, [contexts[i] for i in order], [times[i] for i in order])

        lo, hi = _bracket(batch, self._batches)
        if lo == hi:
            return at_batch(lo)
        return interpolate(batch, self._batches[lo : hi + 1], (at_batch(lo), at_batch(hi)))

    def _added(self, batch: int, prompt: int) -> float:
        lo, hi = _bracket(batch, self._prefill_batches)
        per_batch = [interpolate(prompt, *self._prefill_lines[i]) for i in range(lo, hi + 1)]
        return interpolate(batch, self._prefill_batches[lo : hi + 1], per_batch)


def _bracket(x: float, xs: Sequence[float]) -> tuple[int, int]:
    """Indices of the two grid points `interpolate` would use for x (one if the grid has one)."""
    if len(xs) == 1:
        return 0, 0
    i = bisect_left(xs, x)
    i = 1 if i < 1 else len(xs) - 1 if i > len(xs) - 1 else i
    return i - 1, i


def _check_cell(cell: Mapping, keys: Sequence[str], what: str) -> None:
    if not isinstance(cell, Mapping):
        raise ValueError(f"table {what} cell {cell!r} must be a mapping")
    missing = [key for key in keys if key not in cell]
    if missing:
        raise ValueError(f"table {what} cell {dict(cell)} lacks {', '.join(missing)}")
