"""`LiveEngine`: an in-process vLLM V1 engine stepped one engine step at a time with a given k."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agents.controller import Controller
from agents.cost import CostModel
from agents.features import FeatureBuilder
from agents.records import StepRecord
from serving.config import EngineConfig
from serving.draft_confidence import DraftConfidence
from serving.scheduler_hook import SpecControlScheduler
from serving.threads import limit_threads
from serving.vllm_compat import allow_several_engines_per_process


def _configure_vllm_environment(config: EngineConfig) -> None:
    # vLLM reads these lazily, when the engine is built: one process, no hub, a small KV cache.
    limit_threads()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class LiveEngine:
    """A real vLLM engine whose speculation length is set at every step.

    Requests are prompt token ids with a forced output length (`ignore_eos`); `step()` runs
    one engine step and returns its `StepRecord`. Greedy sampling by default, so outputs are
    the same whatever k schedule is used (speculation is lossless).
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        stat_loggers: Sequence[Any] | None = None,
        plain: bool = False,
    ) -> None:
        """Build the engine (seconds): checks the model directories first.

        `clock` stamps arrivals and token times (pass a virtual clock to replay a trace).
        `stat_loggers` are vLLM stat-logger factories; giving any turns vLLM's stats on.
        `plain` builds vLLM's stock scheduler instead of the hook (for overhead benchmarks);
        a plain engine runs at its configured k and accepts no per-step k.
        """
        self.config = config or EngineConfig()
        self._vocab_size: int = self.config.check_models()["vocab_size"]
        _configure_vllm_environment(self.config)

        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        allow_several_engines_per_process()

        started = time.perf_counter()
        args = EngineArgs(
            model=self.config.model,
            tokenizer=self.config.model,
            dtype=self.config.dtype,
            seed=self.config.seed,
            enforce_eager=True,
            max_model_len=self.config.max_model_len,
            max_num_seqs=self.config.max_num_seqs,
            max_num_batched_tokens=self.config.max_num_batched_tokens,
            enable_prefix_caching=self.config.enable_prefix_caching,
            speculative_config=self.config.speculative_config(),
            scheduler_cls=None if plain else SpecControlScheduler,
            disable_log_stats=not stat_loggers,
        )
        self._engine = LLMEngine.from_engine_args(args, stat_loggers=list(stat_loggers or []))
        self.startup_seconds = time.perf_counter() - started
        scheduler = self._engine.engine_core.engine_core.scheduler
        self.scheduler: SpecControlScheduler | None = None
        if not plain:
            assert isinstance(scheduler, SpecControlScheduler)
            self.scheduler = scheduler
            if self.config.method == "draft_model":
                scheduler.draft_confidence = DraftConfidence.install(self)
        self.clock = clock
        self.outputs: dict[str, list[int]] = {}
        """Generated token ids of every finished request, by request id."""
        self._internal: dict[str, str] = {}
        self._names: dict[str, str] = {}

    @property
    def clock(self) -> Callable[[], float]:
        """The clock that stamps arrivals, steps and token times."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        if self.scheduler is not None:
            self.scheduler.clock = clock

    @property
    def cost_model(self) -> CostModel | None:
        """What times each step: None for the wall clock, else the model clock's cost model
        (the engine then drafts k_max every step; see `serving.scheduler_hook`)."""
        return None if self.scheduler is None else self.scheduler.cost_model

    @cost_model.setter
    def cost_model(self, cost_model: CostModel | None) -> None:
        if cost_model is not None:
            self._require_hook("a model clock").use_cost_model(cost_model)
        elif self.scheduler is not None:
            self.scheduler.use_cost_model(None)

    @property
    def k_max(self) -> int:
        """The largest k this engine accepts (0 when no speculation is configured)."""
        return self.config.k_max

    @property
    def vocab_size(self) -> int:
        """The target model's vocabulary size: prompt token ids lie below it."""
        return self._vocab_size

    @property
    def num_unfinished(self) -> int:
        """Requests added and not yet finished (running or waiting)."""
        return self._engine.get_num_unfinished_requests()

    def has_unfinished(self) -> bool:
        """Whether any request is still running or waiting."""
        return self._engine.has_unfinished_requests()

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        output_tokens: int,
        *,
        arrival_time: float | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> None:
        """Queue a request that generates exactly `output_tokens` tokens after its prompt.

        Raises ValueError, before the engine is touched, for an empty prompt, a token id
        outside the vocabulary, a prompt plus output longer than max_model_len, or a
        request id already in use; the requests already running carry on.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._check_request(request_id, prompt_token_ids, output_tokens)
        params = SamplingParams(
            temperature=temperature,
            seed=seed,
            max_tokens=output_tokens,
            ignore_eos=True,
            detokenize=False,
        )
        internal = self._engine.add_request(
            request_id,
            TokensPrompt(prompt_token_ids=list(prompt_token_ids)),
            params,
            arrival_time=self.clock() if arrival_time is None else arrival_time,
        )
        self._internal[request_id] = internal
        self._names[internal] = request_id
        if self.scheduler is not None:
            self.scheduler.name_request(internal, request_id)

    def step(
        self, k: int | None = None, per_request: Mapping[str, int] | None = None
    ) -> StepRecord:
        """Run one engine step and return what it did.

        With k given, that k (and the per-request overrides) is used for this step; without,
        the attached controller chooses, or the last k carries over.
        """
        if not self.has_unfinished():
            raise RuntimeError("step() called with no unfinished requests: add one first")
        scheduler = self._require_hook("step() with a k")
        if k is not None:
            scheduler.set_next(k, per_request)
        elif per_request:
            raise ValueError("per_request overrides need a global k as well")
        before = scheduler.last_record
        self._collect(self._engine.step())
        record = scheduler.last_record
        if record is None or record is before:
            raise RuntimeError("the engine ran no scheduler step")
        return record

    def step_plain(self) -> float:
        """Run one step of a plain engine (stock scheduler); return its wall time in seconds."""
        started = time.perf_counter()
        self._collect(self._engine.step())
        return time.perf_counter() - started

    def warm_up(self, batch_size: int = 4, steps_per_k: int = 3) -> None:
        """Run a few steps at every k, then reset, so no measured step pays first-use costs.

        The first step at a new shape compiles and allocates (about a second here); an
        evaluation that does not warm up charges it to whichever controller runs first.
        """
        prompt = list(range(10, 42))
        for i in range(batch_size):
            self.add_request(f"warm-up-{i}", prompt, steps_per_k * (self.k_max + 1) * 2 + 2)
        for k in range(self.k_max + 1):
            for _ in range(steps_per_k):
                if not self.has_unfinished():
                    break
                if self.scheduler is None:
                    self.step_plain()  # a plain engine runs at its configured k
                else:
                    self.step(k)
        self.reset()

    def attach(self, controller: Controller | None, features: FeatureBuilder | None) -> None:
        """Let `controller` choose k at every step `step()` is called without one."""
        self._require_hook("a controller").attach(controller, features)

    def abort(self, request_ids: Sequence[str]) -> None:
        """Drop the given requests, wherever they are; others keep running."""
        internal = [self._internal.pop(rid) for rid in request_ids if rid in self._internal]
        if internal:
            self._engine.abort_request(internal, internal=True)
        for rid in internal:
            self._names.pop(rid, None)

    def reset(self) -> None:
        """Abort every unfinished request and forget all outputs; the engine stays loaded."""
        self.abort(list(self._internal))
        # An aborted request leaves the scheduler at its next step; drain those steps here.
        while self._engine.has_unfinished_requests():
            self._engine.step()
        self.outputs.clear()
        if self.scheduler is not None:
            self.scheduler.control.reset_controller()

    def close(self) -> None:
        """Shut the engine down and free its memory.

        vLLM tears down process-wide state (its distributed groups) with it: in a process
        that holds several engines, close them all together, when done with every one.
        """
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.engine_core.shutdown()
            del self._engine

    def __enter__(self) -> LiveEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_hook(self, what: str) -> SpecControlScheduler:
        if self.scheduler is None:
            raise RuntimeError(f"a plain engine (stock vLLM scheduler) does not take {what}")
        return self.scheduler

    def _check_request(
        self, request_id: str, prompt_token_ids: Sequence[int], output_tokens: int
    ) -> None:
        self.config.check_request(request_id, len(prompt_token_ids), output_tokens)
        if request_id in self._internal:
            raise ValueError(f"request_id {request_id!r} is already running")
        low, high = min(prompt_token_ids), max(prompt_token_ids)
        if low < 0 or high >= self._vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"request {request_id!r}: token id {bad} is outside the vocabulary "
                f"0..{self._vocab_size - 1}"
            )

    def _collect(self, request_outputs: list[Any]) -> None:
        for output in request_outputs:
            if output.finished:
                name = self._names.pop(output.request_id, output.request_id)
                self._internal.pop(name, None)
                self.outputs[name] = list(output.outputs[0].token_ids)


__all__ = ["EngineConfig", "LiveEngine"]
