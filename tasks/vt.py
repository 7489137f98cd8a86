"""Variable tracking: follow chains of assignments (``VAR B = VAR A``) scattered through a haystack."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any

from dash_eval.tasks.base import TASKS, Draft, Task, TaskOptions, check_int
from dash_eval.tasks.haystacks import insert_needles
from dash_eval.tasks.needles import english_words


@dataclass(frozen=True)
class VtOptions(TaskOptions):
    """``num_chains`` chains (the first one is asked), each of ``num_hops`` assignments after the value."""

    num_chains: int = 1
    num_hops: int = 4
    max_new_tokens: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("num_chains", self.num_chains, 1)
        check_int("num_hops", self.num_hops, 1)


def variable_names(rng: random.Random, count: int) -> list[str]:
    """``count`` different names of five capital letters that spell no English word of the prose: the scorer
    is case-insensitive, so a name must not be found in ordinary words of an answer."""
    words = set(english_words())
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names and not any(name.lower() in w for w in words):
            names.append(name)
    return names


@TASKS.register("vt")
class VariableTracking(Task):
    description = "multi-hop tracing: find every variable that ends up holding a value through a chain"
    haystacks = ("noise", "essay")
    default_haystack = "noise"
    Options = VtOptions
    options: VtOptions

    def draw(self, rng: random.Random, depth: float) -> dict[str, Any]:
        o = self.options
        per_chain = o.num_hops + 1
        names = variable_names(rng, o.num_chains * per_chain)
        values: list[str] = []
        while len(values) < o.num_chains:
            value = str(rng.randint(10000, 99999))
            if value not in values:
                values.append(value)
        statements = []
        for c in range(o.num_chains):
            chain = names[c * per_chain : (c + 1) * per_chain]
            if c == 0:  # the asked chain starts at the sample's depth and goes on after it
                depths = [depth] + sorted(depth + (1 - depth) * rng.random() for _ in chain[1:])
            else:
                depths = sorted(rng.random() for _ in chain)
            statements.append((depths[0], f"VAR {chain[0]} = {values[c]}."))
            statements += [(d, f"VAR {b} = VAR {a}.") for d, a, b in zip(depths[1:], chain, chain[1:])]
        statements.sort(key=lambda item: item[0])
        return {
            "names": names[:per_chain],
            "value": values[0],
            "statements": statements,
            "haystack": self.haystack.start(rng) if self.haystack else None,
            "depth": depth,
        }

    def render(self, state: dict[str, Any], units: int) -> Draft:
        assert self.haystack is not None
        filler = self.haystack.units(state["haystack"], units, None)
        context = insert_needles(filler, state["statements"], self.haystack.separator)
        value, names = state["value"], state["names"]
        text = (
            "Memorize and track the chain of variable assignments hidden in the text below.\n\n"
            f"{context}\n\n"
            f"Question: Find every variable that is assigned the value {value} in the text above, directly or "
            "through other variables."
        )
        prefix = (
            f"Answer: Following the chain of assignments in the text above, {len(names)} variables are "
            f"assigned the value {value}, namely:"
        )
        metadata = {
            "depth": round(100 * state["depth"], 2),
            "needle_depths": [round(100 * d, 2) for d, _ in state["statements"]],
        }
        return Draft(text, list(names), prefix, metadata)
