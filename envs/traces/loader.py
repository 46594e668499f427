"""`load_trace`: one entry point for every trace format, with detection from the first line."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from envs.traces import azure, burstgpt
from envs.traces.azure import load_azure
from envs.traces.burstgpt import load_burstgpt
from envs.traces.errors import TraceFormatError
from envs.traces.mooncake import load_mooncake
from envs.traces.request import Trace
from envs.traces.synthetic import synthetic_trace
from envs.traces.synthetic_spec import SYNTHETIC_PREFIX, parse_synthetic

LOADERS: dict[str, Callable[[Path], Trace]] = {
    "azure": load_azure,
    "burstgpt": load_burstgpt,
    "mooncake": load_mooncake,
}


def detect_format(path: str | Path) -> str:
    """Name the format of a trace file from its first non-blank line."""
    path = Path(path)
    with path.open(encoding="utf-8-sig") as f:
        first = next(((n, t) for n, t in enumerate(f, start=1) if t.strip()), None)
    if first is None:
        raise TraceFormatError(path, 1, "empty file: cannot detect the trace format")
    line, text = first
    if text.lstrip().startswith("{"):
        return "mooncake"
    names = {name.strip() for name in next(csv.reader([text]))}
    if names.issuperset(azure.COLUMNS):
        return "azure"
    if names.issuperset(burstgpt.COLUMNS):
        return "burstgpt"
    raise TraceFormatError(
        path,
        line,
        f"cannot detect the trace format from {text.strip()[:80]!r}: expected an Azure header "
        f"{','.join(azure.COLUMNS)}, a BurstGPT header with {','.join(burstgpt.COLUMNS)}, "
        "or a Mooncake JSON object per line",
    )


def load_trace(path: str | Path, fmt: str | None = None) -> Trace:
    """Load a trace file, or generate one from a "synthetic:<pattern>?k=v&..." spec.

    `fmt` is one of "azure", "burstgpt", "mooncake"; None detects it from the file.
    """
    if str(path).startswith(SYNTHETIC_PREFIX):
        return synthetic_trace(parse_synthetic(str(path)))
    path = Path(path)
    if fmt is not None and fmt not in LOADERS:
        raise TraceFormatError(
            path, None, f"unknown trace format {fmt!r}; expected one of {sorted(LOADERS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"trace file not found: {path}")
    return LOADERS[fmt or detect_format(path)](path)
