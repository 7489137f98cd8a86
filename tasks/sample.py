"""One task sample and its RULER-format JSONL form (``input``, ``outputs``, ``length``, ``answer_prefix``)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dash_eval.file_modes import atomic_write_bytes

DEFAULT_MAX_NEW_TOKENS = 128


def join_prompt(text: str, answer_prefix: str) -> str:
    """``text`` then ``answer_prefix``, with one space between them unless either side already has whitespace
    (the rule lm-eval uses for its ``gen_prefix``)."""
    if not answer_prefix:
        return text
    if not text or text[-1].isspace() or answer_prefix[0].isspace():
        return text + answer_prefix
    return text + " " + answer_prefix


@dataclass
class Sample:
    """A prompt and the strings its answer must contain.

    ``input`` is the prompt up to the answer; the model continues ``prompt()``, which appends
    ``answer_prefix``. ``length`` is the target length in tokens that prompt plus ``max_new_tokens`` fit in
    (``None`` when a JSONL file did not say). ``metadata`` holds the task, haystack, seed, index, needle
    depths and the measured token count.
    """

    input: str
    outputs: list[str]
    length: int | None
    answer_prefix: str = ""
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    metadata: dict[str, Any] = field(default_factory=dict)
    # False for a JSONL record without max_new_tokens (RULER's own files): the scoring task's budget applies
    budget_given: bool = field(default=True, compare=False, repr=False)

    def prompt(self) -> str:
        return join_prompt(self.input, self.answer_prefix)

    def to_json(self) -> dict[str, Any]:
        """The RULER record: ``index``, ``input``, ``outputs``, ``length``, ``answer_prefix``, plus
        ``max_new_tokens`` and ``metadata``."""
        record: dict[str, Any] = {}
        if "index" in self.metadata:
            record["index"] = self.metadata["index"]
        record["input"] = self.input
        record["outputs"] = list(self.outputs)
        if self.length is not None:
            record["length"] = self.length
        record["answer_prefix"] = self.answer_prefix
        record["max_new_tokens"] = self.max_new_tokens
        record["metadata"] = self.metadata
        return record

    @classmethod
    def from_json(cls, record: Any, where: str = "record") -> Sample:
        """Build a sample from a RULER record; ``where`` (e.g. ``"data.jsonl line 3"``) prefixes errors."""
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for key in ("input", "outputs"):
            if key not in record:
                raise ValueError(f"{where}: missing field {key!r} (a RULER record needs 'input' and 'outputs')")
        text = record["input"]
        if not isinstance(text, str):
            raise ValueError(f"{where}: field 'input' must be a string, got {type(text).__name__}")
        outputs = record["outputs"]
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
            raise ValueError(f"{where}: field 'outputs' must be a non-empty list of strings, got {outputs!r}")
        length = record.get("length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length <= 0):
            raise ValueError(f"{where}: field 'length' must be a positive integer, got {length!r}")
        answer_prefix = record.get("answer_prefix", "")
        if not isinstance(answer_prefix, str):
            raise ValueError(f"{where}: field 'answer_prefix' must be a string, got {answer_prefix!r}")
        max_new = record.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new <= 0:
            raise ValueError(f"{where}: field 'max_new_tokens' must be a positive integer, got {max_new!r}")
        metadata = record.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError(f"{where}: field 'metadata' must be an object, got {type(metadata).__name__}")
        metadata = dict(metadata)
        if "index" in record and "index" not in metadata:
            metadata["index"] = record["index"]
        return cls(text, list(outputs), length, answer_prefix, max_new, metadata, "max_new_tokens" in record)


def read_jsonl(path: str | os.PathLike[str]) -> list[Sample]:
    """Read RULER-format JSONL; a broken line or field raises ``ValueError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {str(path)!r} does not exist")
    samples = []
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path} line {lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                 "save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            samples.append(Sample.from_json(record, where))
    if not samples:
        raise ValueError(f"{path}: holds no samples")
    return samples


def write_jsonl(samples: Iterable[Sample], path: str | os.PathLike[str]) -> Path:
    """Write samples as JSONL atomically: a temporary file in the same folder, renamed into place."""
    path = Path(path)
    atomic_write_bytes(path, "".join(json.dumps(s.to_json(), ensure_ascii=False) + "\n" for s in samples).encode())
    return path
