"""Typed registries: attention methods by name, and compute backends per method.

A method is a small class: a frozen parameter dataclass (validated on construction, before any
compute) and a ``reference`` implementation. Adding a method is one file plus ``@register_method``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from dash_eval.kernels.stats import AttentionStats

BackendFn = Callable[..., "tuple[torch.Tensor, AttentionStats | None]"]

_METHODS: dict[str, AttentionMethod] = {}
_BACKENDS: dict[tuple[str, str], BackendFn] = {}


# --- parameter validation helpers (shared by every method's params dataclass) -----------------------


def check_int(method: str, name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{method}: parameter {name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{method}: parameter {name}={value!r} must be an integer >= {minimum}")


def check_float(
    method: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    accepted: str | None = None,
) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        if accepted is None:
            bound = [] if low is None else [f"{'>' if low_open else '>='} {low}"]
            bound += [] if high is None else [f"<= {high}"]
            accepted = "a finite number" + (" " + " and ".join(bound) if bound else "")
        raise ValueError(f"{method}: parameter {name}={value!r} must be {accepted}")


# Field metadata of a parameter added after results existed: at its default it is left out of a sweep cell's
# identity (hash and directory name), so that cells computed before the parameter existed are still found.
IDENTITY_WHEN_SET = {"identity": "when-set"}


@dataclasses.dataclass(frozen=True)
class MethodParams:
    """Base of every method's parameters. Subclasses add fields with METHODS.md defaults."""

    method_name: ClassVar[str] = ""
    block_size: int = 64

    def __post_init__(self) -> None:
        check_int(self.method_name, "block_size", self.block_size, minimum=1)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> MethodParams:
        unknown = sorted(set(kwargs) - set(cls.field_names()))
        if unknown:
            raise ValueError(
                f"{cls.method_name}: unknown parameter(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(cls.field_names())}"
            )
        return cls(**kwargs)

    @classmethod
    def identity_defaults(cls) -> dict[str, Any]:
        """Parameters (name -> default) that a sweep cell's identity leaves out while at their default."""
        return {
            f.name: f.default for f in dataclasses.fields(cls)
            if f.metadata.get("identity") == "when-set" and f.default is not dataclasses.MISSING
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain (JSON-able) parameters; tensor fields such as a router are left out."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("tensor", False)
        }


class AttentionMethod:
    """One attention method. Subclasses set ``name``, ``params_cls`` and implement ``reference``."""

    name: ClassVar[str]
    params_cls: ClassVar[type[MethodParams]]

    def make_params(self, **kwargs: Any) -> MethodParams:
        return self.params_cls.from_kwargs(**kwargs)

    def reference(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        params: MethodParams,
        *,
        softmax_scale: float,
        return_stats: bool,
    ) -> tuple[torch.Tensor, AttentionStats | None]:
        raise TypeError(f"{type(self).__name__} must implement reference()")


def register_method(name: str) -> Callable[[type[AttentionMethod]], type[AttentionMethod]]:
    def wrap(cls: type[AttentionMethod]) -> type[AttentionMethod]:
        if name in _METHODS:
            raise ValueError(f"attention method {name!r} is already registered")
        cls.name = name
        cls.params_cls.method_name = name
        _METHODS[name] = cls()
        return cls

    return wrap


def get_method(name: str) -> AttentionMethod:
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"unknown attention method {name!r}; known methods: {', '.join(method_names())}")
    return _METHODS[name]


def method_names() -> list[str]:
    return list(_METHODS)


def register_backend(method: str, backend: str) -> Callable[[BackendFn], BackendFn]:
    """Register ``fn(q, k, v, params, *, softmax_scale, return_stats) -> (out, stats | None)``."""

    def wrap(fn: BackendFn) -> BackendFn:
        key = (method, backend)
        if key in _BACKENDS:
            raise ValueError(f"backend {backend!r} for method {method!r} is already registered")
        _BACKENDS[key] = fn
        return fn

    return wrap


def get_backend(method: str, backend: str) -> BackendFn | None:
    return _BACKENDS.get((method, backend))
