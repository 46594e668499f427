"""The launcher's arguments, the settings it hands the engine core, and the controller metrics."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from agents.paths import SHIPPED_POLICY
from agents.records import RequestStep, StepRecord
from agents.registry import parse_controller
from serving.config import default_profile_path
from serving.controller_settings import (
    ControllerSettings,
)
from serving.launch import SERVED_NAME, parse_args
from serving.metrics import ControllerMetrics
from serving.scheduler_choice import (
    ASYNC_SCHEDULER,
    SYNC_SCHEDULER,
    async_methods,
    choose_scheduler,
    platform_schedules_async,
)
from serving.scheduler_hook import check_sync_scheduling
from tests.factories import decode_step


def settings_of(args) -> ControllerSettings:
    return ControllerSettings.from_additional_config(args.additional_config)


def test_no_arguments_serve_the_small_pair_with_the_shipped_policy_on_loopback():
    args = parse_args([])
    assert args.host == "127.0.0.1"
    assert args.scheduler_cls == SYNC_SCHEDULER and args.async_scheduling is False
    assert args.served_model_name == [SERVED_NAME]
    assert args.speculative_config["method"] == "ngram"
    assert settings_of(args).controller == f"guarded:{SHIPPED_POLICY}"
    assert settings_of(args).profile == str(default_profile_path("ngram"))


def test_arguments_without_policy_serve_the_goodput_controller():
    args = parse_args(["--host", "0.0.0.0", "--max-num-seqs", "8"])
    assert args.host == "0.0.0.0" and args.max_num_seqs == 8
    assert settings_of(args).controller == "goodput"


def test_policy_and_controller_options():
    assert settings_of(parse_args(["--policy", "some/dir"])).controller == "guarded:some/dir"
    static = parse_args(["--controller", "static:2", "--ttft-slo-s", "2.5"])
    assert settings_of(static) == ControllerSettings("static:2", ttft_slo_s=2.5)
    adaptive = parse_args(["--controller", "adaptive-verification"])
    assert settings_of(adaptive).controller == "adaptive-verification"
    plain = parse_args(["--controller", "nospec"])
    assert plain.speculative_config is None
    assert settings_of(plain).controller == "nospec"


def test_user_additional_config_is_kept():
    args = parse_args(["--additional-config", '{"other": 1}'])
    assert args.additional_config["other"] == 1 and "turbospec" in args.additional_config


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--controller", "static:9"], "K must be a whole number in 0..4"),
        (["--controller", "wizard"], "unknown controller 'wizard'"),
        (["--profile", str(default_profile_path("draft_model"))], "made for method"),
        (["--profile", "/nonexistent.json"], "no profile '/nonexistent.json'"),
        (["--policy", "a", "--controller", "goodput"], "not allowed with argument"),
        (["--scheduler-cls", "vllm.v1.core.sched.scheduler.Scheduler"], "must subclass"),
        (["--scheduler-cls", "no_such_module.Cls"], "cannot import it"),
        (
            ["--scheduler-cls", ASYNC_SCHEDULER],
            "the engine schedules synchronously here (vLLM's platform here, the CPU",
        ),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


DRAFT_MODEL = (
    '{"method": "draft_model", "model": "checkpoints/lm/draft", "num_speculative_tokens": 4}'
)
NGRAM = {"method": "ngram", "num_speculative_tokens": 4}


def test_this_cpu_machine_serves_with_the_synchronous_hook_even_when_asked_for_async():
    assert platform_schedules_async() is False
    for argv in ([], ["--async-scheduling"], ["--speculative-config", DRAFT_MODEL]):
        args = parse_args(argv)
        assert (args.scheduler_cls, args.async_scheduling) == (SYNC_SCHEDULER, False)


DRAFT_MODEL = (
    '{"method": "draft_model", "model": "checkpoints/lm/draft", "num_speculative_tokens": 4}'
)
NGRAM = {"method": "ngram", "num_speculative_tokens": 4}


def _choose(platform_async, requested=None, speculative=NGRAM, controller="goodput"):
    return choose_scheduler(
        platform_async=platform_async,
        requested=requested,
        speculative=speculative,
        controller=parse_controller(controller, 4),
        methods=async_methods(),
    )


@pytest.mark.parametrize("requested", [None, True, False])
@pytest.mark.parametrize("method", ["ngram", "draft_model", "eagle3", "ngram_gpu", None])
def test_a_platform_that_schedules_synchronously_always_gets_the_synchronous_hook(
    requested, method
):
    speculative = {"method": method, "num_speculative_tokens": 4} if method else None
    choice = _choose(False, requested, speculative)
    assert (choice.async_scheduling, choice.scheduler_cls) == (False, SYNC_SCHEDULER)


@pytest.mark.parametrize(
    ("speculative", "async_expected"),
    [
        ({"method": "draft_model", "num_speculative_tokens": 4}, True),
        ({"method": "eagle3", "num_speculative_tokens": 4}, True),
        ({"method": "deepseek_mtp", "num_speculative_tokens": 1}, True),
        ({"method": "ngram_gpu", "num_speculative_tokens": 4}, True),
        (None, True),  # no speculation: vLLM schedules asynchronously, the hook is idle
        (NGRAM, False),  # vLLM's CPU-side ngram proposer runs synchronously
        ({"method": "suffix", "num_speculative_tokens": 4}, False),
        ({"method": "eagle", "disable_padded_drafter_batch": True}, False),
    ],
)
def test_a_gpu_platform_gets_the_async_hook_where_vllm_schedules_asynchronously(
    speculative, async_expected
):
    choice = _choose(True, None, speculative)
    assert choice.async_scheduling is async_expected
    assert choice.scheduler_cls == (ASYNC_SCHEDULER if async_expected else SYNC_SCHEDULER)
    assert "vLLM" in choice.reason


def test_the_choice_follows_the_users_flag_and_says_why():
    draft = {"method": "draft_model", "num_speculative_tokens": 4}
    on = _choose(True, True, draft)
    assert on.async_scheduling and on.describe() == (
        "speculation control: the async scheduling hook AsyncServingScheduler "
        "(--async-scheduling, draft_model speculation)"
    )
    off = _choose(True, False, draft)
    assert not off.async_scheduling and off.reason == "--no-async-scheduling"
    cpu = _choose(False, True, draft)
    assert cpu.describe() == (
        "speculation control: the synchronous scheduling hook ServingScheduler (vLLM's "
        "platform here, the CPU, always schedules synchronously; --async-scheduling has no "
        "effect on it)"
    )


def test_only_what_cannot_run_asynchronously_is_refused_naming_it():
    with pytest.raises(ValueError, match="--async-scheduling: vLLM schedules ngram speculation"):
        _choose(True, True, NGRAM)
    draft = {"method": "draft_model", "num_speculative_tokens": 4}
    with pytest.raises(ValueError, match="controller 'oracle' looks at each request's draft"):
        _choose(True, True, draft, controller="oracle")
    # Not asked for async scheduling, the oracle gets the synchronous hook.
    by_default = _choose(True, None, draft, controller="oracle")
    assert not by_default.async_scheduling and "oracle reads the drafts" in by_default.reason
    for controller in ("static:2", "goodput", "goodput-per-request", "streak-per-request",
                       "vllm-schedule", "guarded:some/dir", "nospec"):  # fmt: skip
        assert _choose(True, True, draft, controller=controller).async_scheduling


def test_the_hook_refuses_an_async_scheduler_config():
    check_sync_scheduling(SimpleNamespace(async_scheduling=False))
    with pytest.raises(ValueError, match="--no-async-scheduling"):
        check_sync_scheduling(SimpleNamespace(async_scheduling=True))


def test_settings_round_trip_and_refuse_malformed_entries():
    settings = ControllerSettings("guarded:x", profile="p.json", tpot_slo_s=0.1)
    assert ControllerSettings.from_additional_config(settings.to_additional_config()) == settings
    assert ControllerSettings.from_additional_config({}) is None
    assert ControllerSettings.from_additional_config({"other": 1}) is None
    for entry, message in [
        ("goodput", "must be an object"),
        ({"profile": "p"}, "lacks 'controller'"),
        ({"controller": "goodput", "colour": 1}, "unknown key(s) colour"),
        ({"controller": "goodput", "ttft_slo_s": -1}, "ttft_slo_s must be finite and > 0"),
        ({"controller": "goodput", "tpot_slo_s": "fast"}, "tpot_slo_s must be a number"),
        ({"controller": ""}, "must be a controller name"),
    ]:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            ControllerSettings.from_additional_config({"turbospec": entry})


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _step(k: int, batch_size: int) -> StepRecord:
    running = RequestStep("r", k=k, drafted=0, accepted=0, generated=1, prefill_tokens=0,
                          output_tokens=1, first_token_at=0.0)  # fmt: skip
    return decode_step([running] * batch_size, k=k)


def test_controller_metrics_count_k_switches_and_fallback_steps():
    metrics = ControllerMetrics("guarded:test")
    before = _sample("turbospec:k_chosen_count")
    le2 = _sample("turbospec:k_chosen_bucket", le="2.0")
    for k, batch in [(2, 4), (4, 4), (3, 0)]:  # the empty step is not a decision
        metrics.step(_step(k, batch))
    assert _sample("turbospec:k_chosen_count") == before + 2
    assert _sample("turbospec:k_chosen_bucket", le="2.0") == le2 + 1

    reason = {"reason": "obs_out_of_range"}
    switches = _sample("turbospec:controller_switches_total", **reason)
    fallbacks = _sample("turbospec:fallback_decisions_total", **reason)
    metrics.switched("obs_out_of_range")
    metrics.fallback_counts({"obs_out_of_range": 3})
    metrics.fallback_counts({"obs_out_of_range": 5})  # cumulative: 2 more
    assert _sample("turbospec:controller_switches_total", **reason) == switches + 1
    assert _sample("turbospec:fallback_decisions_total", **reason) == fallbacks + 5

    info = {"controller": "guarded:test"}
    metrics.set_deciding("ppo")
    metrics.set_deciding("fallback")
    assert _sample("turbospec:controller_info", deciding="fallback", **info) == 1
    assert _sample("turbospec:controller_info", deciding="ppo", **info) == 0
