"""Checking an uploaded training file with the trainer's own readers and format detection, before it is stored.

Why the trainer's code and not a check of our own: a file this API calls `processed` must be one the
Validating phase of a FineTuneJob accepts, and a refused one must get the same message, naming the line and
the fix (`finetune_trainer.data.readers` reads JSONL line by line; `formats.detect` picks the dataset schema
from the first records; each record is then normalised by that schema, so a bad record is found here too).
No torch, no tokenizer: tokenization needs the base model, which a file does not name.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from finetune_trainer.core.errors import TrainerError
from finetune_trainer.data import formats
from finetune_trainer.data.readers import read_jsonl

TASK = "causal-lm"


@dataclass(frozen=True)
class Checked:
    """The outcome: `processed` with the detected schema and record count, or `error` with the message."""

    status: str  # "processed" | "error"
    details: str | None
    schema: str | None
    records: int


def check_file(path: Path, label: str) -> Checked:
    """Read `path` as JSONL (its lines cited as `<label> line N`), detect its schema from the first records,
    normalise every record. Streamed: only the detection sample is held, so memory does not grow with the file."""
    try:
        lines = read_jsonl(path, label)
        head = list(itertools.islice(lines, formats.DETECTION_SAMPLE))
        if not head:
            return Checked("error", f"{label}: no records (the file is empty or only blank lines)", None, 0)
        detection = formats.detect(head, TASK, {}, field=label)
        formats.normalize(head, detection.format, {})
        count = len(head)
        for record in lines:
            formats.normalize([record], detection.format, {})
            count += 1
    except TrainerError as error:
        return Checked("error", error.message, None, 0)
    return Checked("processed", None, detection.format.name, count)
