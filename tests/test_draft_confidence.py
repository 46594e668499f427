"""The draft model's per-slot confidence captured in vLLM's proposer (real draft_model engine),
checked against the draft model run directly with transformers."""

from __future__ import annotations

import time

import numpy as np
import pytest

from agents.paths import LM_DIR
from serving.draft_confidence import FEATURES, DraftConfidence, DraftConfidenceError, probability

OUTPUT_LENS = (20, 12, 16)


@pytest.fixture
def live(_engines):
    """The session's draft_model engine, clean, on the wall clock, with the capture on (the
    engine's own: LiveEngine installs it, and later tests on this engine read it)."""
    engine, _ = _engines("draft_model")
    engine.reset()
    engine.clock = time.time
    engine.cost_model = None
    confidence = DraftConfidence.install(engine)
    assert confidence is engine.scheduler.draft_confidence
    yield engine, confidence
    engine.reset()


@pytest.fixture(scope="module")
def draft_lm():
    """The draft model in float32, run directly."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(LM_DIR / "draft", dtype=torch.float32)
    return model.eval()


def replay(engine, confidence, prompts) -> list[tuple[list[int], tuple[int, ...], np.ndarray]]:
    """Run the prompts to the end at k_max every step; after every step, per decoding request:
    its tokens so far, the drafts it holds and their captured features."""
    names = []
    for i, prompt in enumerate(prompts):
        engine.add_request(f"c-{i}", prompt, OUTPUT_LENS[i % len(OUTPUT_LENS)])
        names.append(f"c-{i}")
    internal = {name: engine._internal[name] for name in names}
    scheduler = engine.scheduler
    seen = []
    while engine.has_unfinished():
        engine.step(engine.k_max)
        for name in names:
            request = scheduler.requests.get(internal[name])
            if request is None or request.num_computed_tokens < request.num_prompt_tokens:
                continue
            features = confidence.features(internal[name])
            assert features is not None, f"{name}: no features while it holds drafts"
            assert confidence.drafts(internal[name]) == tuple(request.spec_token_ids)
            seen.append((list(request.all_token_ids), tuple(request.spec_token_ids), features))
    return seen


@pytest.mark.engine
def test_captured_confidence_is_the_draft_models_own(live, prompt_factory, draft_lm):
    import torch

    engine, confidence = live
    assert confidence.k_max == engine.k_max == 4
    prompts = [prompt_factory.make(24 + 9 * i, style="source").token_ids for i in range(3)]
    seen = replay(engine, confidence, prompts)
    assert len(seen) >= 12
    rounds = confidence.rounds
    assert rounds >= 5

    checked = 0
    for tokens, drafts, features in seen:
        assert features.shape == (engine.k_max, len(FEATURES))
        assert features.dtype == np.float32
        assert len(drafts) == engine.k_max
        # One teacher-forced pass over context + drafts gives every slot's distribution.
        with torch.no_grad():
            logits = draft_lm(torch.tensor([tokens + list(drafts)])).logits[0]
        positions = logits[len(tokens) - 1 : len(tokens) - 1 + len(drafts)]
        probs = torch.softmax(positions.double(), dim=-1)
        greedy = probs.argmax(dim=-1).tolist()
        assert list(drafts) == greedy, "vLLM's drafts are the draft model's greedy continuation"
        top = probs.max(dim=-1).values.numpy()
        entropy = torch.special.entr(probs).sum(dim=-1).numpy()
        np.testing.assert_allclose(probability(features[:, 0]), top, atol=1e-3)
        np.testing.assert_allclose(features[:, 1], entropy, atol=1e-3)
        checked += 1
    assert checked == len(seen)
    # Confidence varies: not a constant the capture made up.
    stacked = np.stack([f for _, _, f in seen])
    assert stacked[:, :, 0].std() > 0.1 and stacked[:, :, 1].std() > 0.1


@pytest.mark.engine
def test_unknown_and_finished_requests_have_no_features(live, prompt_factory):
    engine, confidence = live
    assert confidence.features("no-such-request") is None
    assert confidence.drafts("no-such-request") is None
    assert DraftConfidence.install(engine) is confidence  # installed once

    prompt = prompt_factory.make(30, style="source").token_ids
    engine.add_request("a", prompt, 3)
    first = engine._internal["a"]
    while engine.has_unfinished():
        engine.step(engine.k_max)
    assert engine.outputs["a"]
    assert confidence.features(first) is None
    assert confidence.drafts(first) is None

    engine.add_request("b", prompt, 6)
    engine.add_request("c", prompt, 6)
    b, c = engine._internal["b"], engine._internal["c"]
    engine.step(engine.k_max)
    engine.step(engine.k_max)
    assert confidence.request_ids == {b, c}  # the finished request is dropped
    assert confidence.features(b) is not None and confidence.features(c) is not None

    # Drafts the request does not hold (dropped, or zeroed when the drafter did not run)
    # have no features.
    request = engine.scheduler.requests[c]
    held = request.spec_token_ids
    assert len(held) == engine.k_max
    request.spec_token_ids = []
    assert confidence.features(c) is None
    request.spec_token_ids = [0] * engine.k_max
    assert confidence.features(c) is None
    request.spec_token_ids = held[:2]  # a prefix (cut to a k) keeps them
    assert confidence.features(c) is not None
    request.spec_token_ids = held

    engine.abort(["b"])
    assert confidence.features(b) is None
    assert confidence.features(c) is not None


def test_refuses_what_it_cannot_hook():
    class Client:  # a multiprocess engine's core client: no engine core in this process
        pass

    class Engine:
        engine_core = Client()

    with pytest.raises(DraftConfidenceError, match="another process"):
        DraftConfidence.install(Engine())
    with pytest.raises(DraftConfidenceError, match="not vLLM's DraftModelProposer"):
        DraftConfidence(object(), object())
