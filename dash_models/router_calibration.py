"""Calibration text for router fitting: where it comes from, how it is cut into sequences, and the record
of both that ``router.json`` keeps (the text never overlaps any task's evaluation data)."""

from __future__ import annotations

import hashlib
import platform
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from dash_eval.dash_models.router_fit import FitSettings

CALIBRATION_SOURCES = ("python-docs", "python-docs-recall")
RECALL_SPAN = (16, 48)  # token lengths of the passages that python-docs-recall repeats
RECALL_COVER = 0.25  # the share of each sequence's second half that repeats earlier passages


def calibration_text(source: str) -> tuple[str, dict[str, Any]]:
    """The calibration text of ``source`` and its description.

    ``python-docs``: the Python language reference as CPython ships it for ``help()`` (``pydoc_data``),
    topics in sorted order. No task of this project draws on it: the needle tasks' haystacks are noise
    sentences, the project's essays and generated needles, so calibration never sees evaluation text.
    """
    if source in ("python-docs", "python-docs-recall"):
        import pydoc_data.topics

        topics = pydoc_data.topics.topics
        text = "\n\n".join(topics[k] for k in sorted(topics))
        desc = {
            "source": "python-docs",
            "description": "CPython's pydoc topics (the language reference text behind help()), sorted by topic",
            "python": platform.python_version(),
        }
    else:
        text = Path(source).read_text(encoding="utf-8")
        desc = {"source": "file", "path": str(Path(source).resolve())}
    desc["text_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    desc["text_chars"] = len(text)
    return text, desc


def calibration_ids(tokenizer: Any, settings: FitSettings) -> tuple[torch.Tensor, dict[str, Any]]:
    """``[sequences, tokens]`` token ids: disjoint windows of the calibration text, one random start per
    equal slice of the text (``seed``), each led by whatever special tokens the tokenizer adds."""
    text, desc = calibration_text(settings.source)
    stream = tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix = tokenizer("", add_special_tokens=True)["input_ids"]
    body = settings.tokens - len(prefix)
    slice_len = len(stream) // settings.sequences
    if slice_len < body:
        raise ValueError(
            f"fit-router: the calibration text ({desc['source']}) has {len(stream)} tokens, fewer than "
            f"sequences x tokens = {settings.sequences} x {body}; accepted: fewer sequences, shorter tokens, "
            f"or a longer text"
        )
    rng = random.Random(settings.seed)
    starts = [s * slice_len + rng.randrange(slice_len - body + 1) for s in range(settings.sequences)]
    rows = [stream[a : a + body] for a in starts]
    if settings.source == "python-docs-recall":
        rows = [repeat_passages(r, rng) for r in rows]
        desc["recall"] = (
            f"in each sequence's second half, passages of {RECALL_SPAN[0]}-{RECALL_SPAN[1]} tokens copied "
            f"from its first half overwrite about {RECALL_COVER:.0%} of the tokens (long-range retrieval for "
            f"the deep layers to attend to)"
        )
    ids = torch.tensor([prefix + r for r in rows], dtype=torch.long)
    desc.update(
        seed=settings.seed,
        starts=starts,
        text_tokens=len(stream),
        sequences=settings.sequences,
        tokens=settings.tokens,
        ids_sha256=hashlib.sha256(ids.numpy().tobytes()).hexdigest(),
    )
    return ids, desc


def repeat_passages(row: list[int], rng: random.Random) -> list[int]:
    """``row`` with passages of its first half copied over parts of its second half: queries in a copy
    attend far back to the original, as a retrieval question attends to its needle."""
    out = list(row)
    n = len(out)
    half = n // 2
    lo, hi = RECALL_SPAN
    if half < 2 * hi:
        return out
    budget = int(RECALL_COVER * (n - half))
    pos = half
    while budget > 0:
        length = rng.randint(lo, hi)
        gap = rng.randint(0, 2 * hi)
        if pos + gap + length > n:
            break
        src = rng.randrange(0, half - length)
        out[pos + gap : pos + gap + length] = row[src : src + length]
        pos += gap + length
        budget -= length
    return out
