"""The project's log lines on stderr, in the processes vLLM starts or the launcher runs."""

from __future__ import annotations

import logging


def log_to_stderr() -> None:
    """Give the "turbospec" loggers a stderr handler at INFO, once per process.

    vLLM configures only its own "vllm" logger; without a handler of ours, INFO lines (which
    controller and which scheduler run) would be dropped in the launcher and in the
    engine-core process.
    """
    logger = logging.getLogger("turbospec")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s", "%m-%d %H:%M:%S")
        )
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
