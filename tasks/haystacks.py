"""Haystacks: the filler text that needles hide in, built as a list of units (sentences or needles).

A haystack draws its random state once per sample (``start``) and then yields the first ``count`` units
for any ``count`` (``units``), so the sizing search can grow or shrink a sample without changing it
otherwise.
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any, ClassVar

from dash_eval.tasks.registry import Registry

HAYSTACKS: Registry[type[Haystack]] = Registry("haystack")

# The noise haystack: plain statements that carry no information and repeat in order.
NOISE_SENTENCES = (
    "The river flows past the old mill.",
    "Clouds drift slowly over the hills.",
    "A bird sings in the morning light.",
    "The road bends and goes on again.",
    "Leaves fall softly on the quiet path.",
)

PROSE_FILE = "prose.txt"


class Haystack(ABC):
    """Base class: ``separator`` joins units (and the needles placed between them)."""

    name: ClassVar[str]
    description: ClassVar[str]
    separator: ClassVar[str] = " "

    def start(self, rng: random.Random) -> Any:
        """Draw this sample's haystack state (an offset, a seed)."""
        return None

    @abstractmethod
    def units(self, state: Any, count: int, distractor: Callable[[random.Random], str] | None) -> list[str]:
        """The first ``count`` units; ``distractor`` makes one distractor needle of the task's form."""


@HAYSTACKS.register("noise")
class NoiseHaystack(Haystack):
    description = "five fixed noise sentences repeated in order"

    def units(self, state: Any, count: int, distractor: Callable[[random.Random], str] | None) -> list[str]:
        return [NOISE_SENTENCES[i % len(NOISE_SENTENCES)] for i in range(count)]


@cache
def prose_sentences() -> tuple[str, ...]:
    """The sentences of the shipped prose (``tasks/data/prose.txt``), in order."""
    text = resources.files("dash_eval.tasks").joinpath("data", PROSE_FILE).read_text(encoding="utf-8")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip() and not p.startswith("#")]
    sentences: list[str] = []
    for paragraph in paragraphs:
        sentences += [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", paragraph) if s]
    return tuple(sentences)


@HAYSTACKS.register("essay")
class EssayHaystack(Haystack):
    description = "sentences of English essays shipped with the project, from a random start, wrapping around"

    def start(self, rng: random.Random) -> int:
        return rng.randrange(len(prose_sentences()))

    def units(self, state: int, count: int, distractor: Callable[[random.Random], str] | None) -> list[str]:
        sentences = prose_sentences()
        return [sentences[(state + i) % len(sentences)] for i in range(count)]


@HAYSTACKS.register("needle")
class NeedleHaystack(Haystack):
    description = "distractor needles of the same form with other keys and values, one per line"
    separator = "\n"

    def start(self, rng: random.Random) -> int:
        return rng.getrandbits(64)

    def units(self, state: int, count: int, distractor: Callable[[random.Random], str] | None) -> list[str]:
        if distractor is None:
            raise ValueError("the 'needle' haystack needs a task that makes distractor needles")
        rng = random.Random(state)
        return [distractor(rng) for _ in range(count)]


def haystack_names() -> list[str]:
    return HAYSTACKS.names()


def insert_needles(units: list[str], needles: list[tuple[float, str]], separator: str) -> str:
    """Place each ``(depth, text)`` needle before unit ``round(depth * len(units))``; join with ``separator``.

    Needles at the same position keep their given order.
    """
    slots: dict[int, list[str]] = {}
    for depth, text in needles:
        slots.setdefault(round(depth * len(units)), []).append(text)
    parts: list[str] = []
    for i in range(len(units) + 1):
        parts += slots.get(i, [])
        if i < len(units):
            parts.append(units[i])
    return separator.join(parts)
