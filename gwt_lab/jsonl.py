"""Reading JSON-lines files (``metrics.jsonl``): the one reader the harness, the tables and the
summary scripts share."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


def read_jsonl(path: str | os.PathLike, warn_torn: bool = False) -> list[dict]:
    """Every JSON object of a ``.jsonl`` file, in order; ``[]`` when the file does not exist.

    Blank lines are skipped, and so is an unparsable *last* line: a run killed in the middle of a
    write leaves a torn line there (``warn_torn``: say so with a warning). An unparsable line
    anywhere else, or a line that is not a JSON object, is damage the caller should hear about:
    ``ValueError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == last:  # torn last line
                if warn_torn:
                    warnings.warn(f"{path}: ignoring incomplete last line {i + 1} ({line[:60]!r}), written by a "
                                  "run that was killed while logging")
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line ({err})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i + 1}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows
