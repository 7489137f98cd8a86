"""Needle in a haystack: single needle, several keys, several values, several queries."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from dash_eval.tasks.base import TASKS, Draft, Task, TaskOptions, check_choice, check_int, count_tokens
from dash_eval.tasks.haystacks import insert_needles
from dash_eval.tasks.needles import NEEDLE_TYPES, distinct_needles, random_needle

SINGULAR = {"numbers": "number", "words": "word", "uuids": "UUID"}
PLURAL = {"numbers": "numbers", "words": "words", "uuids": "UUIDs"}


@dataclass(frozen=True)
class NiahOptions(TaskOptions):
    """``num_keys`` needles' keys (``num_queries`` of them asked), each with ``num_values`` values."""

    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1
    key_type: str = "words"
    value_type: str = "numbers"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("num_keys", self.num_keys, 1)
        check_int("num_values", self.num_values, 1)
        check_int("num_queries", self.num_queries, 1)
        if self.num_queries > self.num_keys:
            raise ValueError(f"num_queries must be <= num_keys={self.num_keys}, got {self.num_queries}")
        check_choice("key_type", self.key_type, NEEDLE_TYPES)
        check_choice("value_type", self.value_type, NEEDLE_TYPES)


@dataclass(frozen=True)
class MultikeyOptions(NiahOptions):
    num_keys: int = 4


@dataclass(frozen=True)
class MultivalueOptions(NiahOptions):
    num_values: int = 4


@dataclass(frozen=True)
class MultiqueryOptions(NiahOptions):
    num_keys: int = 4
    num_queries: int = 4


def join_keys(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


class Niah(Task):
    haystacks = ("noise", "essay", "needle")
    default_haystack = "essay"
    Options = NiahOptions
    options: NiahOptions

    def needle(self, key: str, value: str) -> str:
        o = self.options
        if o.num_values > 1:
            return f"One of the special magic {PLURAL[o.value_type]} for {key} is: {value}."
        return f"The special magic {SINGULAR[o.value_type]} for {key} is: {value}."

    def needle_tokens(self, tok: Any) -> int:
        o = self.options
        rng = random.Random(0)
        one = self.needle(random_needle(rng, o.key_type), random_needle(rng, o.value_type))
        return o.num_keys * o.num_values * count_tokens(tok, one) * 9 // 10  # needles vary a little in length

    def draw(self, rng: random.Random, depth: float) -> dict[str, Any]:
        o = self.options
        keys = distinct_needles(rng, o.key_type, o.num_keys)
        flat = distinct_needles(rng, o.value_type, o.num_keys * o.num_values, avoid=set(keys))
        values = [flat[i * o.num_values : (i + 1) * o.num_values] for i in range(o.num_keys)]
        queried = rng.sample(range(o.num_keys), o.num_queries)
        needles = []
        for k in range(o.num_keys):
            for v, value in enumerate(values[k]):
                first = k == queried[0] and v == 0
                needles.append((depth if first else rng.random(), self.needle(keys[k], value)))
        return {
            "keys": keys,
            "values": values,
            "queried": queried,
            "needles": needles,
            "haystack": self.haystack.start(rng) if self.haystack else None,
            "depth": depth,
        }

    def distractor(self, taken: list[str]):
        o = self.options

        def make(rng: random.Random) -> str:
            while True:
                key, value = random_needle(rng, o.key_type), random_needle(rng, o.value_type)
                if not any(a in b or b in a for a in (key, value) for b in taken):
                    return self.needle(key, value)

        return make

    def render(self, state: dict[str, Any], units: int) -> Draft:
        o = self.options
        keys, values, queried = state["keys"], state["values"], state["queried"]
        taken = keys + [v for vs in values for v in vs]
        assert self.haystack is not None
        filler = self.haystack.units(state["haystack"], units, self.distractor(taken))
        context = insert_needles(filler, state["needles"], self.haystack.separator)
        query = join_keys([keys[k] for k in queried])
        outputs = [v for k in queried for v in values[k]]
        many_needles = o.num_keys * o.num_values > 1
        intro = (
            f"Some special magic {PLURAL[o.value_type]} are hidden in the text below. Memorize them; "
            f"I will ask you about them afterwards."
            if many_needles
            else f"A special magic {SINGULAR[o.value_type]} is hidden in the text below. Memorize it; "
            f"I will ask you about it afterwards."
        )
        if len(outputs) == 1:
            question = f"What is the special magic {SINGULAR[o.value_type]} for {query} mentioned in the text above?"
            prefix = f"The special magic {SINGULAR[o.value_type]} for {query} mentioned in the text above is"
        else:
            question = f"What are all the special magic {PLURAL[o.value_type]} for {query} mentioned in the text above?"
            prefix = f"The special magic {PLURAL[o.value_type]} for {query} mentioned in the text above are"
        metadata = {
            "depth": round(100 * state["depth"], 2),
            "needle_depths": [round(100 * d, 2) for d, _ in state["needles"]],
            "query": [keys[k] for k in queried],
        }
        return Draft(f"{intro}\n\n{context}\n\n{question}", outputs, prefix, metadata)


@TASKS.register("niah_single")
class NiahSingle(Niah):
    description = "retrieve the one value of a single needle hidden at a known depth"
    default_haystack = "noise"


@TASKS.register("niah_multikey")
class NiahMultikey(Niah):
    description = "retrieve the value of one key among several needles with other keys (distractors)"
    Options = MultikeyOptions


@TASKS.register("niah_multivalue")
class NiahMultivalue(Niah):
    description = "retrieve all the values stored under one key in several needles"
    Options = MultivalueOptions


@TASKS.register("niah_multiquery")
class NiahMultiquery(Niah):
    description = "retrieve the values of several keys asked at once"
    Options = MultiqueryOptions
