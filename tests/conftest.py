"""Shared fixtures: one live engine per speculation method (and one without speculation,
method "none") for the whole session."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator

import pytest

from agents.paths import CACHE_ENV, LM_DIR
from envs.traces import PromptFactory
from serving.config import EngineConfig
from serving.threads import limit_threads

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
# Tables the tests record go to a cache of the test run's own (and of the commands it starts).
_CACHE = tempfile.TemporaryDirectory(prefix="turbospec-test-cache-")
os.environ[CACHE_ENV] = _CACHE.name

limit_threads()  # before any test loads torch, and for the processes tests start

METHODS = ("ngram", "draft_model")
TEST_ENGINE = {"k_max": 4, "max_num_seqs": 8, "max_num_batched_tokens": 1024, "max_model_len": 512}


class SpecStatsRecorder:
    """A vLLM stat logger that keeps vLLM's own SpecDecodingStats of every step."""

    def __init__(self) -> None:
        self.steps: list = []

    def factory(self, vllm_config, engine_index: int = 0):
        from vllm.v1.metrics.loggers import StatLoggerBase

        recorder = self

        class _Logger(StatLoggerBase):
            def __init__(self, *args, **kwargs) -> None:
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                if scheduler_stats is not None:
                    recorder.steps.append(scheduler_stats.spec_decoding_stats)

            def log_engine_initialized(self) -> None:
                pass

        return _Logger()


def pytest_collection_modifyitems(items) -> None:
    """Mark every test that uses the session's live engines `engine`, so `pytest -m "not
    engine"` is the fast loop of the pure logic (tests that start engines in processes of
    their own carry the marker themselves)."""
    for item in items:
        if "_engines" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def prompt_factory() -> PromptFactory:
    """Prompts of exact token length from the stdlib corpus the models were trained on."""
    return PromptFactory(LM_DIR / "target", seed=0)


@pytest.fixture(scope="session")
def _engines() -> Iterator[dict]:
    from serving.live_engine import LiveEngine

    built: dict = {}

    def get(method: str):
        if method not in built:
            recorder = SpecStatsRecorder()
            limits = TEST_ENGINE | ({"k_max": 0} if method == "none" else {})
            engine = LiveEngine(
                EngineConfig(method=method, **limits), stat_loggers=[recorder.factory]
            )
            built[method] = (engine, recorder)
        return built[method]

    yield get
    for engine, _ in built.values():
        engine.close()


@pytest.fixture
def live_engines(_engines):
    """The session's live engines by config, for commands run in-process (their `engines`
    argument). A command that asks for an engine the session does not share fails, naming
    it: its flags must give the session's limits (TEST_ENGINE)."""

    handed: list = []

    def provide(config: EngineConfig):
        engine, _ = _engines(config.method)
        if engine.config != config:
            raise ValueError(f"the test session shares no engine built with {config}")
        handed.append(engine)
        return engine

    yield provide
    for engine in handed:  # as the next test expects the session's engines
        engine.reset()
        engine.clock = time.time
        engine.cost_model = None


TEST_FLAGS = (
    "--k-max", str(TEST_ENGINE["k_max"]),
    "--max-num-seqs", str(TEST_ENGINE["max_num_seqs"]),
    "--max-num-batched-tokens", str(TEST_ENGINE["max_num_batched_tokens"]),
    "--max-model-len", str(TEST_ENGINE["max_model_len"]),
)  # fmt: skip
"""The command-line flags of the session's engine limits."""


@pytest.fixture(params=METHODS)
def engine_and_stats(request, _engines):
    """A live engine (ngram, then draft_model) with vLLM's stats; reset after each test."""
    engine, recorder = _engines(request.param)
    engine.reset()
    engine.clock = time.time  # an environment test leaves its virtual clock behind
    engine.cost_model = None  # ... and its model clock
    recorder.steps.clear()
    yield engine, recorder
    engine.reset()


@pytest.fixture
def engine(engine_and_stats):
    """A live engine per speculation method, clean at the start of the test."""
    return engine_and_stats[0]
