"""Aggregation over the whole context: common-words (``cwe``) and frequent-coded-words (``fwe``) extraction.

Neither hides needles in a haystack; the context itself is the data, and its size is the unit count.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

from dash_eval.tasks.base import TASKS, Draft, Task, TaskOptions, check_int
from dash_eval.tasks.needles import english_words

# RULER's settings: below 4k tokens the common words repeat less so that some rare words still fit.
SHORT_CONTEXT = 4096


@dataclass(frozen=True)
class CweOptions(TaskOptions):
    """``num_common`` words occur ``freq_common`` times each, the rest ``freq_rare`` times; ``None`` picks
    30/3 from 4,096 tokens on and 6/1 below."""

    num_common: int = 10
    freq_common: int | None = None
    freq_rare: int | None = None
    max_new_tokens: int = 120

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("num_common", self.num_common, 1)
        if self.freq_common is not None:
            check_int("freq_common", self.freq_common, 2)
        if self.freq_rare is not None:
            check_int("freq_rare", self.freq_rare, 1)
        if self.freq_common is not None and self.freq_rare is not None and self.freq_rare >= self.freq_common:
            raise ValueError(f"freq_rare must be < freq_common={self.freq_common}, got {self.freq_rare}")


@cache
def _substring_free(words: tuple[str, ...]) -> list[str]:
    """Words that occur inside no other word of the vocabulary (so matching one never credits another)."""
    return [w for w in words if not any(w != other and w in other for other in words)]


@cache
def _answer_pool(words: tuple[str, ...], wording: str) -> list[str]:
    """The common words' pool: substring-free words that the prompt's own wording does not contain, so that an
    answer echoing the question matches none of them (RULER's substring scoring would credit it)."""
    return [w for w in _substring_free(words) if w not in wording]


@TASKS.register("cwe")
class CommonWords(Task):
    description = "aggregation: name the words repeated most often in a long numbered list"
    Options = CweOptions
    options: CweOptions

    def frequencies(self) -> tuple[int, int]:
        o = self.options
        short = self.length < SHORT_CONTEXT
        common = o.freq_common if o.freq_common is not None else (6 if short else 30)
        rare = o.freq_rare if o.freq_rare is not None else (1 if short else 3)
        if rare >= common:
            raise ValueError(f"freq_rare={rare} must be < freq_common={common}")
        return common, rare

    # 2: answer words never occur in the prompt's own wording (an answer that echoes the question scored)
    version: ClassVar[int] = 2

    @staticmethod
    def wording(listing: str, k: int) -> tuple[str, str]:
        """The prompt around the list, and the answer prefix."""
        text = (
            "Below is a numbered list of words. Some of them occur much more often than the others. "
            f"Memorize the ones that occur most often.\n\n{listing}\n\n"
            f"Question: What are the {k} most common words in the list above?"
        )
        return text, f"Answer: The {k} most common words in the list above are:"

    def draw(self, rng: random.Random, depth: float) -> dict[str, Any]:
        vocabulary = english_words()
        free = _answer_pool(vocabulary, " ".join(self.wording("", self.options.num_common)).lower())
        if len(free) < self.options.num_common:
            raise ValueError(f"num_common must be <= {len(free)}, got {self.options.num_common}")
        common = rng.sample(free, self.options.num_common)
        rare = [w for w in vocabulary if w not in common]
        rng.shuffle(rare)
        return {"common": common, "rare": rare, "order_seed": rng.getrandbits(64)}

    def max_units(self, state: dict[str, Any]) -> int:
        # A rare word may come back in several slots, as long as it stays rarer than every common word.
        common, rare = self.frequencies()
        return len(state["rare"]) * ((common - 1) // rare)

    def render(self, state: dict[str, Any], units: int) -> Draft:
        freq_common, freq_rare = self.frequencies()
        common, rare = state["common"], state["rare"]
        items = common * freq_common + [rare[j % len(rare)] for j in range(units)] * freq_rare
        random.Random(state["order_seed"]).shuffle(items)
        listing = " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))
        text, prefix = self.wording(listing, len(common))
        metadata = {"freq_common": freq_common, "freq_rare": freq_rare, "list_length": len(items)}
        return Draft(text, list(common), prefix, metadata)


@dataclass(frozen=True)
class FweOptions(TaskOptions):
    """Coded words drawn with Zipf frequencies ``rank ** -alpha``; the ``num_answers`` most frequent are asked."""

    alpha: float = 2.0
    num_answers: int = 3
    max_new_tokens: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 1.0:
            raise ValueError(f"alpha must be a number > 1, got {self.alpha!r}")
        check_int("num_answers", self.num_answers, 1)


def zipf_counts(total: int, alpha: float) -> list[int]:
    """Counts per rank summing to ``total``: ``floor(total * r^-alpha / Z)`` while at least 1, then ones."""
    norm = sum(r**-alpha for r in range(1, total + 1))
    counts = []
    for r in range(1, total + 1):
        c = int(total * r**-alpha / norm)
        if c < 1:
            break
        counts.append(c)
    counts += [1] * (total - sum(counts))
    return counts


def _leading_counts(total: int, alpha: float, norm: float, m: int) -> list[int]:
    """The first (up to) ``m`` entries of ``zipf_counts(total, alpha)``, given its normaliser ``norm``."""
    counts: list[int] = []
    for r in range(1, m + 1):
        c = int(total * r**-alpha / norm)
        if c < 1:
            break
        counts.append(c)
    return counts + [1] * min(m - len(counts), total - sum(counts))


@TASKS.register("fwe")
class FrequentWords(Task):
    description = "aggregation: find the most frequent coded words of a Zipf-distributed text"
    Options = FweOptions
    options: FweOptions

    def draw(self, rng: random.Random, depth: float) -> dict[str, Any]:
        return {"words_seed": rng.getrandbits(64), "order_seed": rng.getrandbits(64)}

    @staticmethod
    def coded_words(seed: int, count: int) -> list[str]:
        rng = random.Random(seed)
        seen: set[str] = set(english_words())  # coded words are never English words
        words: list[str] = []
        while len(words) < count:
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(5))
            if word not in seen:
                seen.add(word)
                words.append(word)
        return words

    def min_units(self, most: int) -> int:
        # The smallest text whose top words stand strictly apart from the next one: zipf_counts' count of rank
        # r is floor(total * r^-alpha / Z(total)), so only ranks k and k + 1 and the running normaliser are needed.
        k, alpha = self.options.num_answers, self.options.alpha
        norm = sum(r**-alpha for r in range(1, k + 1))
        for total in range(k + 1, most + 1):
            norm += total**-alpha
            counts = _leading_counts(total, alpha, norm, k + 1)
            if len(counts) > k and counts[k - 1] > counts[k]:
                return total
        raise ValueError(
            f"fwe: with alpha={alpha!r} the {k} most frequent words stand apart from the next only in a text of more "
            f"than {most} words, longer than the length allows; accepted: a smaller alpha (the default is 2) or "
            "fewer num_answers"
        )

    def render(self, state: dict[str, Any], units: int) -> Draft:
        k = self.options.num_answers
        counts = zipf_counts(units, self.options.alpha)
        words = self.coded_words(state["words_seed"], len(counts))
        items = [w for w, c in zip(words, counts) for _ in range(c)]
        random.Random(state["order_seed"]).shuffle(items)
        text = (
            "Read the coded text below and keep track of how often each coded word occurs.\n\n"
            f"{' '.join(items)}\n\n"
            f"Question: Which {k} coded words occur most often in the coded text above?"
        )
        prefix = f"Answer: The {k} most frequent coded words in the coded text above are:"
        metadata = {"counts": counts[: k + 1], "distinct_words": len(counts)}
        return Draft(text, words[:k], prefix, metadata)
