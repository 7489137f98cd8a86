"""Random needle keys and values: 7-digit numbers, adjective-noun words, and UUIDs."""

from __future__ import annotations

import random
import re
import uuid
from functools import cache

# Short, common, unambiguous words; an adjective-noun pair ("quiet-harbor") is one word needle.
ADJECTIVES = (
    "amber ancient bitter bold brave brief bright broad calm cheerful clever cold cozy crimson curious "
    "damp dark distant dusty eager early empty faint fancy fierce flat fresh gentle giant golden grand "
    "green hollow honest humble icy idle jolly keen lazy little lively lonely loud lucky mellow merry "
    "misty modest narrow neat noble odd orange pale plain polite proud purple quick quiet rapid rare "
    "restless rough round royal rusty salty scarlet secret shiny silent silver simple sleepy slow smooth "
    "snowy soft solid sour spicy steady stormy strange sturdy sunny swift tall tame tender thin tiny "
    "velvet violet vivid warm wild windy wise wooden young"
).split()
NOUNS = (
    "anchor apple arrow badger banner barrel basket beacon bell blanket boat bottle bridge brook bucket "
    "cabin camel candle canyon castle cedar chair cliff cloud comet compass cottage crane crown cup "
    "desert dolphin door dragon drum eagle engine falcon feather fence field flag forest fountain fox "
    "garden gate glacier goat harbor hammer hat hill horse island jacket jungle kettle kite ladder "
    "lantern lemon lion meadow mirror monkey moon mountain needle oak ocean orchard otter owl palace "
    "parrot pebble pencil piano pillow planet pond rabbit river robin saddle shell ship shovel spoon "
    "squirrel star stone tiger tower train tulip valley violin wagon whale window wolf"
).split()

NEEDLE_TYPES = ("numbers", "words", "uuids")


def random_number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def random_word(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def random_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def random_needle(rng: random.Random, kind: str) -> str:
    """A random key or value of ``kind`` (one of ``NEEDLE_TYPES``)."""
    if kind == "numbers":
        return random_number(rng)
    if kind == "words":
        return random_word(rng)
    if kind == "uuids":
        return random_uuid(rng)
    raise ValueError(f"needle type {kind!r} is not known; accepted: {', '.join(NEEDLE_TYPES)}")


def distinct_needles(
    rng: random.Random, kind: str, count: int, avoid: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """``count`` different needles of ``kind``, none in ``avoid`` and none a substring of another, so a
    substring match can never credit the wrong one."""
    chosen: list[str] = []
    for _ in range(1000 * (count + 1)):
        if len(chosen) == count:
            break
        item = random_needle(rng, kind)
        taken = list(avoid) + chosen
        if any(item in other or other in item for other in taken):
            continue
        chosen.append(item)
    if len(chosen) < count:
        raise ValueError(f"could not draw {count} distinct {kind} needles")
    return chosen


@cache
def english_words() -> tuple[str, ...]:
    """Lowercase words of 4 to 12 letters from the shipped prose and the needle word lists, sorted."""
    from dash_eval.tasks.haystacks import prose_sentences

    words = set(re.findall(r"\b[a-z]{4,12}\b", " ".join(prose_sentences())))
    return tuple(sorted(words | set(ADJECTIVES) | set(NOUNS)))
