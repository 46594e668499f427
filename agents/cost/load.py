"""What one engine step computed: the composition a cost model prices."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agents.records import RequestStep


@dataclass(frozen=True, slots=True)
class StepLoad:
    """The work of one engine step, request by request.

    Decoding requests compute one token of their own plus the drafts they verify, reading
    their whole context from the KV cache; prefilling requests compute a chunk of their
    prompt. A draft model, where there is one, runs `draft_len` sequential passes to
    propose the step's longest draft.
    """

    decode_context: tuple[int, ...] = ()
    """Per decoding request: tokens already in its KV cache, which its attention reads."""
    verified: tuple[int, ...] = ()
    """Per decoding request, in the same order: draft tokens the target verified for it."""
    prefill: tuple[tuple[int, int], ...] = ()
    """Per prefilling request: (prompt tokens computed in this step, tokens cached before)."""
    draft_len: int = 0
    """The longest draft verified in the step: a draft model's sequential passes."""

    def __post_init__(self) -> None:
        if len(self.decode_context) != len(self.verified):
            raise ValueError(
                f"StepLoad: {len(self.decode_context)} decode contexts but "
                f"{len(self.verified)} verified counts; give one of each per decoding request"
            )
        if self.draft_len < 0 or any(v < 0 for v in self.verified):
            raise ValueError("StepLoad: verified counts and draft_len must be >= 0")

    @classmethod
    def uniform(cls, batch: int, k: int, context: int = 256, prefill_tokens: int = 0) -> StepLoad:
        """`batch` decoding requests of `context` tokens each verifying k drafts, plus one
        prefill chunk of `prefill_tokens` (none if 0): what analytic controllers predict."""
        return cls(
            decode_context=(int(context),) * batch,
            verified=(int(k),) * batch,
            prefill=((int(prefill_tokens), 0),) if prefill_tokens > 0 else (),
            draft_len=int(k) if batch else 0,
        )

    @classmethod
    def build(cls, requests: Iterable[tuple[int, int, int]]) -> StepLoad:
        """From (prompt tokens computed, context before the step, drafts verified) per
        scheduled request: those computing prompt tokens prefill, the others decode."""
        contexts: list[int] = []
        counts: list[int] = []
        prefill: list[tuple[int, int]] = []
        for prompt, context, verified in requests:
            if prompt:
                prefill.append((prompt, context))
            else:
                contexts.append(context)
                counts.append(verified)
        return cls(tuple(contexts), tuple(counts), tuple(prefill), max(counts, default=0))

    @property
    def num_decode(self) -> int:
        """Decoding requests in the step."""
        return len(self.verified)

    @property
    def verified_tokens(self) -> int:
        """Draft tokens verified, over all requests."""
        return sum(self.verified)

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens computed, over all prefilling requests."""
        return sum(tokens for tokens, _ in self.prefill)

    @property
    def num_tokens(self) -> int:
        """Tokens the target model computes: one per decoding request, its verified drafts,
        and the prompt chunks."""
        return self.num_decode + self.verified_tokens + self.prefill_tokens

    @property
    def mean_context(self) -> float:
        """Mean KV-cache length of the decoding requests (0 when none decode)."""
        return sum(self.decode_context) / self.num_decode if self.num_decode else 0.0


def load_of(
    requests: Iterable[RequestStep], verified: Callable[[RequestStep], int] | None = None
) -> StepLoad:
    """The load of a step from its per-request records.

    `verified(r)`, when given, replaces each decoding request's verified drafts: the load the
    step would have computed at another k (e.g. `lambda r: min(k, r.proposed)`).
    """
    return StepLoad.build(
        (r.prefill_tokens, r.context, r.drafted if verified is None else verified(r))
        for r in requests
    )
