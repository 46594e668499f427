"""The launcher's arguments, the settings it hands the engine core, and the controller metrics."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from agents.paths import PROJECT_ROOT, SHIPPED_POLICY
from agents.records import RequestStep, StepRecord
from envs.ledger import SLO
from serving.config import default_profile_path
from serving.controller_settings import (
    DEFAULT_TPOT_SLO_S,
    DEFAULT_TTFT_SLO_S,
    ControllerSettings,
)
from serving.launch import SCHEDULER_CLS, SERVED_NAME, parse_args
from serving.metrics import ControllerMetrics
from serving.scheduler_hook import check_sync_scheduling
from tests.factories import decode_step


def settings_of(args) -> ControllerSettings:
    return ControllerSettings.from_additional_config(args.additional_config)


def test_no_arguments_serve_the_small_pair_with_the_shipped_policy_on_loopback():
    args = parse_args([])
    assert args.host == "127.0.0.1"
    assert args.scheduler_cls == SCHEDULER_CLS and args.async_scheduling is False
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
        (["--async-scheduling"], "synchronous scheduler only"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_async_scheduling_is_refused_before_any_engine_starts():
    done = subprocess.run(
        [sys.executable, "-m", "serving.launch", "--async-scheduling"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "synchronous scheduler only" in done.stderr
    assert "EngineCore" not in done.stderr + done.stdout


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


def test_serving_slo_defaults_are_the_training_ones():
    assert (SLO().ttft_s, SLO().tpot_s) == (DEFAULT_TTFT_SLO_S, DEFAULT_TPOT_SLO_S)


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
