"""The task base class, sizing a sample to a token budget, and ``generate_samples``.

A task draws everything random about one sample once (``draw``), then renders it with any number of
haystack units (``render``). Sizing searches for the largest number of units whose prompt, measured with
the evaluated model's own tokenizer, still leaves room for the answer budget.
"""

from __future__ import annotations

import dataclasses
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from dash_eval.tasks.haystacks import HAYSTACKS, Haystack
from dash_eval.tasks.registry import Registry, UnknownNameError
from dash_eval.tasks.sample import DEFAULT_MAX_NEW_TOKENS, Sample, join_prompt

TASKS: Registry[type[Task]] = Registry("task")


def check_int(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")


def check_choice(field: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"{field} must be one of {', '.join(accepted)}; got {value!r}")


@dataclass(frozen=True)
class TaskOptions:
    """Options every task takes; a task's own options subclass this."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        check_int("max_new_tokens", self.max_new_tokens, 1)


@dataclass
class Draft:
    """What a task renders: the sample before sizing is recorded."""

    input: str
    outputs: list[str]
    answer_prefix: str
    metadata: dict[str, Any]


class Task(ABC):
    """One long-context probe. Subclasses set the class attributes and implement ``draw`` and ``render``."""

    name: ClassVar[str]
    description: ClassVar[str]
    metric: ClassVar[str] = "string_match_all"
    haystacks: ClassVar[tuple[str, ...]] = ()
    default_haystack: ClassVar[str | None] = None
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    # Raised when a change makes other prompts from the same seed; sweep cells of a version above 1 carry it in
    # their identity, so results of the older prompts are not reused.
    version: ClassVar[int] = 1

    def __init__(self, options: TaskOptions, haystack: Haystack | None, length: int) -> None:
        self.options = options
        self.haystack = haystack
        self.length = length

    @abstractmethod
    def draw(self, rng: random.Random, depth: float) -> Any:
        """Everything random about one sample; ``depth`` in [0, 1] is where its first needle goes."""

    def min_units(self, most: int) -> int:
        """The fewest units a sample needs (aggregation tasks need enough data for a clear answer); a ValueError
        if that is more than ``most`` (a unit takes at least one token, so ``most`` is the token budget)."""
        return 0

    def needle_tokens(self, tok: Any) -> int:
        """About how many tokens a sample's needles take in all (0 for tasks without needles): checked against
        the budget before any sample is drawn, so that options asking for more needles than the length holds
        fail at once instead of drawing them first."""
        return 0

    def max_units(self, state: Any) -> int | None:
        """The most haystack units this sample can take (``None``: no limit)."""
        return None

    @abstractmethod
    def render(self, state: Any, units: int) -> Draft:
        """The sample with ``units`` haystack units (a deterministic function of ``state`` and ``units``)."""


def task_names() -> list[str]:
    return TASKS.names()


def spread_depths(n: int) -> list[float]:
    """``n`` depths evenly spaced over [0, 1], ordered so that every prefix is spread too (0, 1, 1/2, ...):
    a run limited to its first few samples still sees the start, the end and the middle."""
    if n == 1:
        return [0.5]
    grid = [k / (n - 1) for k in range(n)]
    order = [0]
    distance = [abs(g - grid[0]) for g in grid]
    while len(order) < n:
        nxt = max(range(n), key=lambda k: (distance[k], -k))
        order.append(nxt)
        distance = [min(d, abs(g - grid[nxt])) for d, g in zip(distance, grid)]
    return [grid[k] for k in order]


@lru_cache(maxsize=8)
def _load_tokenizer(name: str) -> Any:
    """From a directory or the local Hugging Face cache only, as models are loaded: offline, a hub id not in the
    cache would otherwise retry the network for most of a minute before failing."""
    from dash_eval.dash_models import resolve_model_path
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name), local_files_only=True)


def resolve_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object, or a name/path (``default`` is the embedded model) loaded with AutoTokenizer."""
    if isinstance(tokenizer, str):
        if not tokenizer:
            raise ValueError("tokenizer must be a tokenizer object, a model path or 'default'; got ''")
        tokenizer = _load_tokenizer(tokenizer)
    if tokenizer is None or not callable(tokenizer):
        raise ValueError(
            f"tokenizer must be a tokenizer object, a model path or 'default'; got {type(tokenizer).__name__}"
        )
    if count_tokens(tokenizer, "The quick brown fox jumps over the lazy dog.") == 0:
        raise ValueError(f"tokenizer {tokenizer!r} encodes a non-empty sentence to 0 tokens; lengths can't be measured")
    return tokenizer


def adds_special_tokens(tokenizer: Any, text: str) -> bool:
    """Whether lm-eval's ``HFLM`` encodes ``text`` with the tokenizer's special tokens: yes, unless the text starts
    with the BOS token already (a chat template writes its own)."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def count_tokens(tokenizer: Any, text: str, add_special_tokens: bool | None = None) -> int:
    """Tokens the model sees for ``text``: by default as lm-eval encodes a prompt (``adds_special_tokens``)."""
    if add_special_tokens is None:
        add_special_tokens = adds_special_tokens(tokenizer, text)
    return len(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def render_prompt(text: str, answer_prefix: str, tokenizer: Any = None, chat_template: bool = False) -> str:
    """The text the model continues: ``text`` then ``answer_prefix``, or with ``chat_template`` the
    tokenizer's chat template around ``text`` as the user turn, the assistant turn opened with
    ``answer_prefix``."""
    if not chat_template:
        return join_prompt(text, answer_prefix)
    messages = [{"role": "user", "content": text}]
    opened = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return opened + answer_prefix


def largest_fitting(
    cost: Callable[[int], int], budget: int, guess: int, limit: int | None = None, start: int = 0
) -> tuple[int, int]:
    """The largest unit count ``u`` with ``cost(u) <= budget`` and that cost.

    ``cost`` is close to linear in ``u`` (each unit costs at least one token), so interpolation between the
    best fitting and the smallest overflowing count lands within a unit or two in a few tokenizations.
    Requires ``cost(start) <= budget``. ``limit`` caps the count (a task that runs out of material).
    """
    c0 = cost(start)
    lo, c_lo = start, c0
    hi: int | None = None
    c_hi = 0
    if limit is not None:
        if limit <= start:
            return lo, c_lo
        hi, c_hi = limit + 1, budget + 1  # an overflow by assumption, refined once ``limit`` is measured
    u = max(start + 1, guess) if limit is None else min(max(start + 1, guess), limit)
    for _ in range(200):
        c = cost(u)
        if c <= budget:
            if u > lo:
                lo, c_lo = u, c
        elif hi is None or u < hi:
            hi, c_hi = u, c
        if hi is not None and hi - lo <= 1:
            return lo, c_lo
        if hi is None:
            if lo > budget + 1:
                raise ValueError(
                    f"{lo} haystack units cost only {c_lo} tokens (budget {budget}): the tokenizer under-reports "
                    "lengths"
                )
            slope = max((c_lo - c0) / (lo - start), 1e-3) if lo > start else 1.0
            u = lo + 1 + min(int((budget - c_lo) / slope), budget + 1)
        else:
            slope = (c_hi - c_lo) / (hi - lo)
            step = int((budget - c_lo) / slope) if slope > 0 else (hi - lo) // 2
            u = min(hi - 1, max(lo + 1, lo + step))
    return lo, c_lo


def _make_options(task_cls: type[Task], options: dict[str, Any]) -> TaskOptions:
    accepted = [f.name for f in dataclasses.fields(task_cls.Options)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for task {task_cls.name!r}; accepted: {', '.join(accepted)}"
        )
    return task_cls.Options(**options)


def _make_haystack(task_cls: type[Task], haystack: str | None) -> tuple[str | None, Haystack | None]:
    if haystack is None:
        haystack = task_cls.default_haystack
    if haystack is None:
        return None, None
    if not task_cls.haystacks:
        raise ValueError(f"task {task_cls.name!r} takes no haystack, got haystack={haystack!r}")
    if haystack not in HAYSTACKS:
        raise UnknownNameError(f"unknown haystack {haystack!r}; known: {', '.join(HAYSTACKS.names())}")
    check_choice(f"haystack for task {task_cls.name!r}", haystack, task_cls.haystacks)
    return haystack, HAYSTACKS.get(haystack)()


def generate_samples(
    task: str,
    *,
    length: int,
    n: int,
    seed: int,
    tokenizer: Any,
    haystack: str | None = None,
    chat_template: bool = False,
    **options: Any,
) -> list[Sample]:
    """``n`` samples of ``task``, each sized so that its prompt plus ``max_new_tokens`` fits ``length`` tokens.

    ``tokenizer`` is the evaluated model's tokenizer (an object, a path, or ``default``). The same
    arguments give the same samples. Needle depths spread evenly over the samples. With
    ``chat_template=True`` the length is measured on the prompt inside the tokenizer's chat template (see
    ``render_prompt``), for models that will be prompted that way.

    >>> samples = generate_samples("niah_single", length=2048, n=10, seed=0, tokenizer="default")
    >>> samples[0].metadata["token_count"] + samples[0].max_new_tokens <= 2048
    True
    """
    task_cls = TASKS.get(task)
    check_int("length", length, 1)
    check_int("n", n, 1)
    check_int("seed", seed, 0)  # as a sweep's tasks[].seed and lm-eval's task metadata accept
    opts = _make_options(task_cls, options)
    haystack_name, haystack_obj = _make_haystack(task_cls, haystack)
    budget = length - opts.max_new_tokens
    if budget <= 0:
        raise ValueError(
            f"length {length} leaves no room for the prompt after the answer budget max_new_tokens="
            f"{opts.max_new_tokens}"
        )
    tok = resolve_tokenizer(tokenizer)
    if chat_template and not getattr(tok, "chat_template", None):
        raise ValueError("chat_template=True but the tokenizer has no chat template")
    runner = task_cls(opts, haystack_obj, length)
    if (needles := runner.needle_tokens(tok)) > budget:
        raise ValueError(
            f"length {length} is too short for task {task!r} with options {dataclasses.asdict(opts)}: its needles "
            f"alone take about {needles} tokens, and {budget} are left after max_new_tokens={opts.max_new_tokens}"
        )

    samples = []
    guess = 16
    for index, depth in enumerate(spread_depths(n)):
        rng = random.Random(f"{task}|{haystack_name}|{length}|{seed}|{index}")
        state = runner.draw(rng, depth)

        def cost(units: int, state: Any = state) -> int:
            draft = runner.render(state, units)
            text = render_prompt(draft.input, draft.answer_prefix, tok, chat_template)
            return count_tokens(tok, text)  # as lm-eval will encode it

        start = runner.min_units(budget)
        c0 = cost(start)
        if c0 > budget:
            raise ValueError(
                f"length {length} is too short for task {task!r}: its template and needles alone take {c0} "
                f"tokens, plus max_new_tokens={opts.max_new_tokens} for the answer"
            )
        limit = runner.max_units(state)
        units, tokens = largest_fitting(cost, budget, guess, limit, start)
        if units == limit and tokens < budget * 0.95:
            raise ValueError(
                f"task {task!r} cannot fill length {length}: it runs out of material at {limit} units "
                f"({tokens} tokens) with options {dataclasses.asdict(opts)}"
            )
        guess = units
        draft = runner.render(state, units)
        metadata = {
            "task": task,
            "haystack": haystack_name,
            "seed": seed,
            "index": index,
            "token_count": tokens,
            "haystack_units": units,
            "chat_template": bool(chat_template),
            **draft.metadata,
            "options": dataclasses.asdict(opts),
        }
        samples.append(Sample(draft.input, draft.outputs, length, draft.answer_prefix, opts.max_new_tokens, metadata))
    return samples


def lm_eval_task_dir() -> Path:
    """The folder of the lm-eval task configs (``dash_*`` tasks), for ``lm_eval --include_path``."""
    return Path(__file__).resolve().parent / "lm_eval_configs"


def task_info(name: str) -> dict:
    """A task's description, metric, accepted haystacks and default options."""
    cls = TASKS.get(name)
    return {
        "name": name,
        "description": cls.description,
        "metric": cls.metric,
        "haystacks": list(cls.haystacks),
        "default_haystack": cls.default_haystack,
        "options": cls.Options().__dict__.copy(),
    }
