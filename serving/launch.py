"""`python -m serving.launch`: vLLM's OpenAI-compatible server with a controller choosing k.

    python -m serving.launch                                  # small pair, shipped policy
    python -m serving.launch --policy DIR [vllm serve args]   # guarded policy, goodput fallback
    python -m serving.launch [vllm serve args]                # analytic goodput controller
    python -m serving.launch --controller static:2 ...        # any baseline controller

Every `vllm serve` argument works as it does there: this is vLLM's own argument parser and API
server, with defaults for the small CPU model pair in `checkpoints/` and the scheduler hook
installed through `--scheduler-cls`: the async hook where vLLM would schedule asynchronously,
the synchronous one elsewhere (`serving.scheduler_choice`; the launcher logs which). The
controller settings travel to the engine-core process in `--additional-config` (see
`serving.controller_settings`). The server binds 127.0.0.1 unless `--host` says otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from agents.paths import SHIPPED_POLICY
from serving.config import EngineConfig, default_profile_path
from serving.controller_settings import (
    DEFAULT_TPOT_SLO_S,
    DEFAULT_TTFT_SLO_S,
    ControllerSettings,
)
from serving.logs import log_to_stderr
from serving.model_id import model_id
from serving.scheduler_choice import (
    SchedulerChoice,
    async_methods,
    choose_scheduler,
    platform_schedules_async,
)
from serving.threads import limit_threads

LOGGER_NAME = "turbospec.serving.launch"
SHUTDOWN_DRAIN_S = 30
"""Seconds requests in flight get to finish after SIGTERM (vLLM's --shutdown-timeout)."""
SERVED_NAME = "turbospec-small"
"""The model name clients use when the default small pair is served."""


def _prepare_environment() -> tempfile.TemporaryDirectory | None:
    """Set what vLLM and prometheus_client read at import; return the metrics dir to clean."""
    limit_threads()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(EngineConfig().kv_cache_gib))
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return None
    # The controller's metrics are written in the engine-core process; a shared directory is
    # how prometheus_client lets the API server's /metrics collect them.
    metrics_dir = tempfile.TemporaryDirectory(prefix="turbospec-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
    return metrics_dir


def build_parser():
    """vLLM's `serve` parser with the small pair's defaults and the controller options."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(
        FlexibleArgumentParser(
            prog="python -m serving.launch",
            description=__doc__.split("\n\n")[0]
            + " Options are those of `vllm serve`, plus the controller group below.",
        )
    )
    group = parser.add_argument_group("speculation controller (TurboSpec-RL)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--policy",
        help="an exported policy folder: serve with the guarded PPO controller (fallback: "
        f"goodput). Unset and no arguments at all: {SHIPPED_POLICY}",
    )
    choice.add_argument(
        "--controller",
        help="any controller name instead: goodput (used when arguments but no --policy are "
        "given), goodput-confidence, adaptive-verification, slo-verification (confidence-"
        "ranked draft slots; synchronous scheduling), goodput-per-request, static:K, "
        "vllm-schedule, nospec, guarded:DIR",
    )
    group.add_argument(
        "--profile",
        help="the engine's step-time profile JSON; unset: checkpoints/profiles/<method>.json",
    )
    group.add_argument(
        "--ttft-slo-s",
        type=float,
        default=DEFAULT_TTFT_SLO_S,
        help="time-to-first-token SLO, seconds",
    )
    group.add_argument(
        "--tpot-slo-s",
        type=float,
        default=DEFAULT_TPOT_SLO_S,
        help="time-per-output-token SLO, seconds",
    )

    engine = EngineConfig()
    parser.set_defaults(
        model=engine.model,
        host="127.0.0.1",
        dtype=engine.dtype,
        enforce_eager=True,
        max_model_len=engine.max_model_len,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        enable_prefix_caching=engine.enable_prefix_caching,
        seed=engine.seed,
        speculative_config=engine.speculative_config(),
        # Drain on SIGTERM: vLLM's default (0) aborts by cancelling its output handler, which
        # leaves streams in flight waiting forever and the process never exits.
        shutdown_timeout=SHUTDOWN_DRAIN_S,
    )
    return parser


def controller_settings(args: argparse.Namespace, no_arguments: bool) -> ControllerSettings:
    """The controller the arguments ask for; adjusts args.speculative_config for nospec.

    Raises ValueError naming the problem (a profile that is missing or made for another
    model or method, a controller name that does not parse).
    """
    from agents.cost import load_profile
    from agents.registry import parse_controller

    if args.policy:
        name = f"guarded:{args.policy}"
    elif args.controller:
        name = args.controller
    else:
        name = f"guarded:{SHIPPED_POLICY}" if no_arguments else "goodput"

    speculative = args.speculative_config
    k_max = speculative.get("num_speculative_tokens", 0) if speculative else 0
    spec = parse_controller(name, k_max)
    if not spec.speculates:
        args.speculative_config = None
    elif not speculative:
        raise ValueError(f"controller {name!r} needs --speculative-config")

    profile = ""
    if spec.needs_profile:
        method = speculative["method"]
        profile = args.profile or str(default_profile_path(method))
        folders = [args.model] + ([speculative["model"]] if method == "draft_model" else [])
        local = all(Path(folder).is_dir() for folder in folders)
        load_profile(profile, method=method, model_id=model_id(*folders) if local else None)
    return ControllerSettings(
        controller=spec.name,
        profile=profile,
        ttft_slo_s=args.ttft_slo_s,
        tpot_slo_s=args.tpot_slo_s,
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and check the arguments; exit 2 with a message naming what is wrong.

    Checks everything that can be checked before vLLM starts: the controller name and its
    profile, the scheduling and the hook for it (`serving.scheduler_choice`), and a
    replacement scheduler class. Puts the controller settings into `args.additional_config`
    and pins `args.async_scheduling` and `args.scheduler_cls` to the choice.
    """
    return _parse(argv)[0]


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, SchedulerChoice]:
    from agents.registry import parse_controller

    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.model_tag is not None:
        args.model = args.model_tag
        args.model_tag = None
    try:
        settings = controller_settings(args, no_arguments=not argv)
        speculative = args.speculative_config
        k_max = speculative.get("num_speculative_tokens", 0) if speculative else 0
        choice = choose_scheduler(
            platform_async=platform_schedules_async(),
            requested=args.async_scheduling,
            speculative=speculative,
            controller=parse_controller(settings.controller, k_max),
            methods=async_methods(),
        )
    except ValueError as err:  # ProfileError is a ValueError
        parser.error(str(err))
    args.async_scheduling = choice.async_scheduling
    if args.scheduler_cls is None:
        args.scheduler_cls = choice.scheduler_cls
    else:
        _check_scheduler_cls(parser, args.scheduler_cls, choice)
    args.additional_config = {**(args.additional_config or {}), **settings.to_additional_config()}
    if args.model == EngineConfig().model and not args.served_model_name:
        args.served_model_name = [SERVED_NAME]
    return args, choice


def main(argv: Sequence[str] | None = None) -> int:
    """Run vLLM's API server with the controller until SIGTERM or Ctrl-C; return 0."""
    argv = sys.argv[1:] if argv is None else argv
    metrics_dir = _prepare_environment()  # before anything imports prometheus_client

    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args

    args, choice = _parse(argv)
    log_to_stderr()
    logging.getLogger(LOGGER_NAME).info(choice.describe())
    cli_env_setup()
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    try:
        ServeSubcommand.cmd(args)
    finally:
        if metrics_dir is not None:
            metrics_dir.cleanup()
    return 0


def _check_scheduler_cls(
    parser: argparse.ArgumentParser, qualname: str, choice: SchedulerChoice
) -> None:
    """A replacement scheduler must still be a serving scheduler, or no controller would run,
    and of the kind the engine schedules with, or the hook would misread its drafts."""
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler

    from serving.serving_scheduler import ServedControl

    try:
        cls = resolve_obj_by_qualname(qualname)
    except (ImportError, AttributeError, ValueError) as err:
        parser.error(f"--scheduler-cls {qualname}: cannot import it ({err})")
    if not (isinstance(cls, type) and issubclass(cls, ServedControl)):
        parser.error(f"--scheduler-cls {qualname} must subclass {choice.scheduler_cls}")
    if issubclass(cls, AsyncScheduler) != choice.async_scheduling:
        how = "asynchronously" if choice.async_scheduling else "synchronously"
        parser.error(
            f"--scheduler-cls {qualname}: the engine schedules {how} here "
            f"({choice.reason}), so it must subclass {choice.scheduler_cls}"
        )


if __name__ == "__main__":
    sys.exit(main())
