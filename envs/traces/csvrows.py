"""Row-by-row reading of CSV trace files with header and field-count checks."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from envs.traces.errors import TraceFormatError


def csv_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, values of `columns`) for each data row of a CSV file.

    Raises TraceFormatError for an empty file, a missing column, a row with the wrong number
    of fields, or a file with a header but no data rows. Blank lines are skipped.
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise TraceFormatError(path, 1, "empty file: expected a CSV header")
            names = [name.strip() for name in header]
            missing = [c for c in columns if c not in names]
            if missing:
                raise TraceFormatError(
                    path,
                    reader.line_num,
                    f"missing column {', '.join(map(repr, missing))} (header: {names})",
                )
            indices = [names.index(c) for c in columns]
            rows = 0
            for row in reader:
                if not row:
                    continue
                if len(row) != len(names):
                    raise TraceFormatError(
                        path, reader.line_num, f"expected {len(names)} fields, got {len(row)}"
                    )
                rows += 1
                yield reader.line_num, [row[i] for i in indices]
        except csv.Error as e:
            raise TraceFormatError(path, reader.line_num, f"malformed CSV: {e}") from None
        if rows == 0:
            raise TraceFormatError(path, reader.line_num + 1, "no data rows after the header")
