"""The draft model's confidence in each token it proposes, captured where vLLM computes it.

vLLM's draft-model proposer (`vllm/v1/spec_decode/llm_base_proposer.py`,
`SpecDecodeBaseProposer`, the base of `DraftModelProposer` in `draft_model.py`) drafts
greedily: in `propose()` it runs the draft model once per draft slot and, for each,
`_greedy_sample(hidden_states)` computes the logits (`self.model.compute_logits`) and takes
their argmax. Those logits are thrown away. `DraftConfidence` replaces `_greedy_sample` on the
model runner's `drafter` instance by the same computation that also keeps, per row, the
probability of the argmax token and the entropy of the distribution (a softmax over the logits
already computed, one exp per logit: the draft model does not run again), and wraps `propose()`
on the same instance to know where a proposal round starts and ends. At the end of a round, row
i of the batch is the request `model_runner.input_batch.req_ids[i]` (the order vLLM itself uses to
hand the drafts to the scheduler: `GPUModelRunner.take_draft_token_ids`), so each request gets
its proposal's per-slot features, by vLLM's internal request id (`Request.request_id` in the
scheduler, with its random suffix).

Per request, `features(request_id)` gives the proposal made for it last, which is the one it
holds (`Request.spec_token_ids`) between engine steps: a float32 array (k_max, 2) whose
columns are `FEATURES`: the log-odds log(p / (1 - p)) of the proposed token's probability p,
clipped to +-`LOG_ODDS_CLIP` so that certainty stays finite, and the entropy of the draft
distribution in nats; rows past the proposal's length are zero. With method draft_model on the
model clock the engine drafts k_max every step, so every slot is filled.

Pinned to vllm 0.32.0: `install` checks the internals it relies on (the engine core in
process, the uniprocess executor's `driver_worker.worker.model_runner.drafter`, a
`DraftModelProposer` whose `_greedy_sample` and `propose` are the base class's, the plain
greedy path: no local argmax reduction, no heterogeneous vocabulary) and raises
`DraftConfidenceError` naming what it did not find, rather than record something else.

Where it runs. It hooks the model runner, so it needs the worker in the caller's process:
vLLM's uniprocess executor (`UniProcExecutor`, `vllm/v1/executor/uniproc_executor.py`) with
the engine core in process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), which is how `LiveEngine`
builds it; on a single GPU with those settings it works as here (the softmax runs on the GPU;
the features are copied to the host when first read). With a multiprocess executor (tensor or
pipeline parallel, `MultiprocExecutor`/Ray) or the API server (engine core in its own process)
the worker is in another process and nothing recorded there reaches the scheduler. The
features would then have to travel with the model runner's output: a field on
`vllm.v1.outputs.ModelRunnerOutput` (say `draft_features: list[np.ndarray] | None`, rows in
`req_ids` order) filled at the end of `GPUModelRunner.sample_tokens` / `execute_model` from the
drafter (as `_draft_token_ids` is), carried back by the executor (it pickles
`ModelRunnerOutput` whole, so a new field travels without further change) and read in the
scheduler's `update_from_output`, where drafts arrive, to keep per `Request`; with async
scheduling that output comes one step later, like the drafts themselves. That is not built
here.

Cost: per draft slot, one exp and three reductions over (batch, vocab) next to vLLM's own
argmax, plus a dict update per proposal round (measured in docs/engine.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

FEATURES = ("log_odds", "entropy")
"""The columns of `DraftConfidence.features`, per draft slot."""
LOG_ODDS_CLIP = 20.0
"""Log-odds are clipped to +-this (p = 1 in float32 would otherwise be infinite)."""

_MARK = "_turbospec_draft_confidence"
_GREEDY_BODY = "self.model.compute_logits(hidden_states).argmax(dim=-1)"
"""vLLM 0.32.0's greedy draft sampling, which the wrapper repeats (checked at install)."""


class DraftConfidenceError(RuntimeError):
    """The engine is not one whose draft proposer this module can hook."""


def log_odds(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), clipped to +-`LOG_ODDS_CLIP`, as float32."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        value = np.log(p) - np.log1p(-p)
    return np.clip(value, -LOG_ODDS_CLIP, LOG_ODDS_CLIP).astype(np.float32)


def probability(log_odds_column: np.ndarray) -> np.ndarray:
    """The probability a log-odds column stands for (the inverse of `log_odds`, up to the clip)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(log_odds_column, dtype=np.float64)))


class _Round:
    """One proposal round: per row, the drafted ids and (p, entropy) per slot, on the device
    until first read."""

    __slots__ = ("_features", "_ids", "_stats", "_token_ids", "num_slots")

    def __init__(self, ids: torch.Tensor | None, stats: torch.Tensor | None, num_slots: int):
        self._ids = ids  # (batch, num_slots) int64, or None when num_slots == 0
        self._stats = stats  # (batch, num_slots, 2) float32: p, entropy
        self.num_slots = num_slots
        self._features: np.ndarray | None = None
        self._token_ids: list[list[int]] | None = None

    def features(self) -> np.ndarray:
        if self._features is None:
            assert self._stats is not None
            stats = self._stats.cpu().numpy()
            out = np.empty(stats.shape, dtype=np.float32)
            out[..., 0] = log_odds(stats[..., 0])
            out[..., 1] = stats[..., 1]
            self._features = out
            self._stats = None
        return self._features

    def token_ids(self, row: int) -> tuple[int, ...]:
        if self._token_ids is None:
            assert self._ids is not None
            self._token_ids = self._ids.cpu().tolist()
            self._ids = None
        return tuple(self._token_ids[row])


def _walk(root: Any, path: str, what: str) -> Any:
    """root.a.b.c for path "a.b.c", or a DraftConfidenceError naming the missing link."""
    obj = root
    walked = type(root).__name__
    for name in path.split("."):
        if not hasattr(obj, name):
            raise DraftConfidenceError(
                f"{walked} ({type(obj).__module__}.{type(obj).__name__}) has no attribute "
                f"{name!r}: {what} (DraftConfidence is pinned to vllm 0.32.0)"
            )
        obj = getattr(obj, name)
        walked += f".{name}"
    return obj


def _check_drafter(drafter: Any) -> None:
    """Raise DraftConfidenceError unless `drafter` is vLLM 0.32.0's plain greedy draft model."""
    try:
        from vllm.v1.spec_decode.draft_model import DraftModelProposer
        from vllm.v1.spec_decode.llm_base_proposer import SpecDecodeBaseProposer
    except ImportError as error:
        raise DraftConfidenceError(
            f"vLLM's draft-model proposer was not found ({error}); pinned to vllm 0.32.0"
        ) from error
    if drafter is None:
        raise DraftConfidenceError(
            "the model runner has no drafter: the engine runs no speculative decoding "
            "(build it with speculative method draft_model)"
        )
    if not isinstance(drafter, DraftModelProposer):
        raise DraftConfidenceError(
            f"the model runner's drafter is {type(drafter).__name__}, not vLLM's "
            "DraftModelProposer: build the engine with speculative method draft_model"
        )
    for name in ("_greedy_sample", "propose"):
        base = getattr(SpecDecodeBaseProposer, name, None)
        if base is None:
            raise DraftConfidenceError(
                f"SpecDecodeBaseProposer.{name} was not found (pinned to vllm 0.32.0)"
            )
        if getattr(type(drafter), name) is not base:
            raise DraftConfidenceError(
                f"{type(drafter).__name__} overrides SpecDecodeBaseProposer.{name}; "
                "the wrapper reproduces the base class's (vllm 0.32.0)"
            )
    try:
        source = inspect.getsource(SpecDecodeBaseProposer._greedy_sample)
    except (OSError, TypeError) as error:
        raise DraftConfidenceError(
            f"cannot read SpecDecodeBaseProposer._greedy_sample's source to check it: {error}"
        ) from error
    if _GREEDY_BODY not in source:
        raise DraftConfidenceError(
            f"SpecDecodeBaseProposer._greedy_sample no longer computes {_GREEDY_BODY!r} "
            "(pinned to vllm 0.32.0)"
        )
    for flag in ("use_local_argmax_reduction", "use_heterogeneous_vocab"):
        if not hasattr(drafter, flag):
            raise DraftConfidenceError(
                f"the drafter has no attribute {flag!r} (pinned to vllm 0.32.0)"
            )
        if getattr(drafter, flag):
            raise DraftConfidenceError(
                f"the drafter has {flag} on: its greedy path does not see the full draft "
                "distribution this module reads"
            )
    for name in ("model", "parallel_drafting", "speculative_config"):
        _walk(drafter, name, "the drafter's state read by the wrapper")
    _walk(drafter, "model.compute_logits", "the draft model's logits")


class DraftConfidence:
    """Per-slot confidence of the draft model in each proposal, by request.

    Installed on the model runner's drafter (`install`); every proposal round records, per
    request in the batch, (k_max, 2) features (`FEATURES`), read by `features(request_id)`.
    Entries of requests the worker no longer holds are dropped at every round, and `features`
    answers None for a request the scheduler (when known) no longer holds, so finished and
    aborted requests are forgotten. With the scheduler known, `features` also answers None
    when the drafts the request holds are not the recorded proposal's (see `_entry`).
    """

    def __init__(self, drafter: Any, model_runner: Any, scheduler: Any | None = None) -> None:
        """Wrap `drafter` (vLLM's `DraftModelProposer` on `model_runner`, both in this process).

        `scheduler`, when given (vLLM's `Scheduler`), lets `features` answer None at once for
        a request that finished or was aborted. Prefer `install(engine)`.
        """
        _check_drafter(drafter)
        _walk(model_runner, "input_batch.req_ids", "which request each drafted row is")
        _walk(model_runner, "requests", "the worker's live requests")
        if getattr(drafter, _MARK, None) is not None:
            raise DraftConfidenceError("this drafter already has a DraftConfidence installed")
        self._drafter = drafter
        self._runner = model_runner
        self._scheduler = scheduler
        self.k_max: int = int(drafter.speculative_config.num_speculative_tokens)
        """The engine's most draft tokens per request: the rows of every feature array."""
        self.rounds = 0
        """Proposal rounds recorded."""
        self.skipped = 0
        """Proposal rounds whose rows could not be matched to requests (left unrecorded)."""
        self._calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._entries: dict[str, tuple[_Round, int]] = {}
        self._original_propose = drafter.propose
        drafter._greedy_sample = self._greedy_sample
        drafter.propose = self._propose
        setattr(drafter, _MARK, self)

    @classmethod
    def install(cls, engine: Any) -> DraftConfidence:
        """The `DraftConfidence` of a live in-process engine, installed on first call.

        `engine` is a `serving.live_engine.LiveEngine` or vLLM's `LLMEngine`; it must run the
        engine core and its uniprocess executor in this process and speculate with method
        draft_model. Raises DraftConfidenceError otherwise, naming what was not found.
        """
        llm = getattr(engine, "_engine", engine)  # LiveEngine wraps vLLM's LLMEngine
        client = _walk(llm, "engine_core", "the engine's core client")
        if not hasattr(client, "engine_core"):
            raise DraftConfidenceError(
                f"the engine core runs in another process ({type(client).__name__}): "
                "build the engine with VLLM_ENABLE_V1_MULTIPROCESSING=0 (as LiveEngine does)"
            )
        core = client.engine_core
        executor = _walk(core, "model_executor", "the engine core's executor")
        if not hasattr(executor, "driver_worker"):
            raise DraftConfidenceError(
                f"the executor {type(executor).__name__} has no in-process worker "
                "(driver_worker): only vLLM's UniProcExecutor runs the model runner here"
            )
        runner = _walk(executor, "driver_worker.worker.model_runner", "the in-process worker")
        drafter = getattr(runner, "drafter", None)
        existing = getattr(drafter, _MARK, None)
        if existing is not None:
            return existing
        return cls(drafter, runner, getattr(core, "scheduler", None))

    # --- reading --------------------------------------------------------------------------

    def features(self, request_id: str) -> np.ndarray | None:
        """(k_max, 2) float32 features (`FEATURES`) of the last proposal for `request_id`
        (vLLM's internal id), rows past its length zero; None for a request never proposed
        for, finished or aborted, or (scheduler known) not holding that proposal's drafts."""
        found = self._entry(request_id)
        if found is None:
            return None
        round_, row = found
        out = np.zeros((self.k_max, len(FEATURES)), dtype=np.float32)
        if round_.num_slots:
            out[: round_.num_slots] = round_.features()[row]
        return out

    def drafts(self, request_id: str) -> tuple[int, ...] | None:
        """The token ids that proposal drafted (what the request holds, or a longer proposal
        of which it holds the first ones), or None as for `features`."""
        found = self._entry(request_id)
        if found is None:
            return None
        round_, row = found
        return round_.token_ids(row) if round_.num_slots else ()

    @property
    def request_ids(self) -> frozenset[str]:
        """The requests with a recorded proposal (at most those the worker held last round)."""
        return frozenset(self._entries)

    def forget(self, request_ids: Iterable[str]) -> None:
        """Drop what is recorded for these requests."""
        for rid in request_ids:
            self._entries.pop(rid, None)

    def _entry(self, request_id: str) -> tuple[_Round, int] | None:
        found = self._entries.get(request_id)
        if found is None or self._scheduler is None:
            return found
        request = self._scheduler.requests.get(request_id)
        if request is None:  # finished or aborted
            del self._entries[request_id]
            return None
        # The drafts it holds must be (a prefix of) the proposal recorded: they are not when
        # the scheduler dropped them (a prefill chunk's, or during a step, once scheduled) or
        # when the drafter did not run (vLLM zeroes the drafts of a batch too long for it).
        round_, row = found
        held = tuple(request.spec_token_ids)
        proposed = round_.token_ids(row) if round_.num_slots else ()
        if proposed[: len(held)] != held or (proposed and not held):
            return None
        return found

    # --- the hooks ------------------------------------------------------------------------

    def _greedy_sample(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """vLLM 0.32.0's `SpecDecodeBaseProposer._greedy_sample` (plain path), keeping the
        proposed token's probability and the distribution's entropy."""
        logits = self._drafter.model.compute_logits(hidden_states)
        token_ids = logits.argmax(dim=-1)
        # The softmax relative to the proposed (top) token, in one exp pass and no log over
        # the vocabulary: shifted = l - l_top <= 0, z = sum exp(shifted), p_top = 1 / z,
        # entropy = log z - sum p * shifted. Masked (-inf) logits give 0 * -inf, skipped.
        logits = logits.float()
        shifted = logits - logits.gather(-1, token_ids.unsqueeze(-1))
        weights = shifted.exp()
        z = weights.sum(dim=-1)
        spread = shifted.mul_(weights).nansum(dim=-1)
        stats = torch.stack((z.reciprocal(), z.log() - spread / z), dim=-1)
        self._calls.append((token_ids, stats))
        return token_ids

    def _propose(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._calls.clear()
        draft_token_ids = self._original_propose(*args, **kwargs)
        try:
            self._end_round(draft_token_ids)
        finally:
            self._calls.clear()
        return draft_token_ids

    def _end_round(self, draft_token_ids: torch.Tensor) -> None:
        req_ids = list(self._runner.input_batch.req_ids)
        calls = self._calls
        batch, num_slots = draft_token_ids.shape
        round_: _Round | None = None
        if batch == len(req_ids) and None not in req_ids:
            if num_slots == 0:
                round_ = _Round(None, None, 0)
            elif calls and sum(ids.shape[0] for ids, _ in calls) == batch * num_slots:
                if self._drafter.parallel_drafting:  # one call, rows request-major
                    ids = torch.cat([ids for ids, _ in calls]).view(batch, num_slots)
                    stats = torch.cat([s for _, s in calls]).view(batch, num_slots, 2)
                else:  # one call per slot, one row per request
                    ids = torch.stack([ids for ids, _ in calls], dim=1)
                    stats = torch.stack([s for _, s in calls], dim=1)
                round_ = _Round(ids, stats, num_slots)
        entries = self._entries
        if round_ is None:
            # Drafts not from the greedy path (probabilistic draft sampling) or rows that do
            # not match the batch: what the requests held before is stale, drop it.
            self.skipped += 1
            for rid in req_ids:
                entries.pop(rid, None)
        else:
            self.rounds += 1
            for row, rid in enumerate(req_ids):
                entries[rid] = (round_, row)
        live = self._runner.requests
        for rid in [rid for rid in entries if rid not in live]:
            del entries[rid]


__all__ = [
    "FEATURES",
    "LOG_ODDS_CLIP",
    "DraftConfidence",
    "DraftConfidenceError",
    "log_odds",
    "probability",
]
