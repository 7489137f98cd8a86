"""Cells of a sweep: one grid point of one method, on one task at one length.

A cell's identity is its canonical spec (model, task, length, samples, seed, method and every parameter,
the target sparsity and calibration settings when it has one, and the contents of the files it reads besides
the model: a JSONL task, a router, layer scales). Its directory name carries every parameter readably and ends
in a hash of the spec, so two different cells never share a directory and the same cell always finds its
earlier results; a file rewritten in place (a regenerated JSONL, a refitted router) makes new cells.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dash_eval.evals.sweep_config import SweepConfig, config_hash, grid_points

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")
_DIGESTS: dict[tuple, str | None] = {}


def _generator_version(task: str | None) -> int:
    """The task generator's version (``tasks.base.Task.version``; 1 for JSONL cells, which generate nothing)."""
    if task is None:
        return 1
    from dash_eval.tasks.base import TASKS

    return TASKS.get(task).version


def content_digest(path: str | None) -> str | None:
    """SHA-256 (16 hex digits) of a file, or of a directory's files (names and bytes, sorted), or None when
    ``path`` is None or names nothing. Cached on the files' sizes and modification times."""
    if path is None or not os.path.exists(path):
        return None
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp not in _DIGESTS:
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(root) if root.is_dir() else p.name).encode() + b"\0")
            h.update(p.read_bytes())
        _DIGESTS[stamp] = h.hexdigest()[:16]
    return _DIGESTS[stamp]


@dataclass(frozen=True)
class Cell:
    index: int  # position in the sweep's expansion order (what shards split)
    method: str
    params: dict[str, Any]  # every parameter of the method, defaults filled in (calibrated one excluded)
    explicit: tuple[str, ...]  # the parameters the config set
    task: str  # leaderboard label
    length: int | None  # None: the JSONL file's own lengths
    samples: int | None
    seed: int
    task_spec: Any  # TaskSpec
    target_sparsity: float | None = None
    calibrate: str | None = None
    calibrate_range: tuple[float, float] | None = None
    label: str = ""  # the series in reports (the method entry's label, default its method)
    router: str | None = None  # the method entry's own router; None: the model's
    per_layer: bool = False  # target_sparsity calibrated per layer (dash's scale times a per-layer multiplier)
    layer_scales: str | None = None  # the entry's fixed per-layer multipliers of scale (a file or router directory)
    entry: int = 0  # index of the method entry in the config

    @property
    def series(self) -> str:
        return self.label or self.method

    def effective_router(self, config: SweepConfig) -> str | None:
        """The router this cell runs with: its entry's, else the model's (``None``: the checkpoint's own,
        or mean pooling)."""
        return self.router if self.router is not None else config.model.router

    def spec(self, config: SweepConfig) -> dict[str, Any]:
        """Everything that determines this cell's result, as plain JSON values."""
        spec: dict[str, Any] = {
            "model": dataclasses.asdict(config.model),
            "task": self.task,
            "task_source": {
                "task": self.task_spec.task,
                "haystack": self.task_spec.haystack,
                "options": dict(sorted(self.task_spec.options.items())),
                "jsonl": self.task_spec.jsonl,
            },
            "length": self.length,
            "samples": self.samples,
            "seed": self.seed,
            "method": self.method,
            "params": dict(sorted(self.identity_params().items())),
        }
        if self.router is not None:  # only when the entry sets one, so that other cells keep their identity
            spec["router"] = self.router
        if self.layer_scales is not None:  # likewise
            spec["layer_scales"] = self.layer_scales
        # what the files hold, not only their names (None for the no-router keyword)
        files = {"jsonl": self.task_spec.jsonl, "router": self.effective_router(config),
                 "layer_scales": self.layer_scales}
        digests = {key: d for key, path in files.items() if (d := content_digest(path)) is not None}
        if digests:
            spec["file_digests"] = digests
        if (version := _generator_version(self.task_spec.task)) > 1:  # only then, so other cells keep their identity
            spec["task_source"]["version"] = version
        # batch size changes nothing in the answers (issue 5 guarantees it), so it stays out of the identity
        spec["model"].pop("batch_size", None)
        if self.target_sparsity is not None:
            spec["target_sparsity"] = self.target_sparsity
            spec["calibrate"] = self.calibrate
            spec["calibrate_range"] = list(self.calibrate_range) if self.calibrate_range else None
            spec["calibration"] = dataclasses.asdict(config.calibration)
            if self.per_layer:  # only when set, so that other cells keep their identity
                spec["calibrate_per_layer"] = True
        return spec

    def identity_params(self) -> dict[str, Any]:
        """``params`` less those added after results existed that sit at their default
        (``registry.IDENTITY_WHEN_SET``), so that older cells keep their identity."""
        from dash_eval.kernels import get_method

        late = get_method(self.method).params_cls.identity_defaults()
        return {k: v for k, v in self.params.items() if not (k in late and v == late[k])}

    def hash(self, config: SweepConfig) -> str:
        return config_hash(self.spec(config))

    def calibration_key(self, config: SweepConfig) -> str:
        """Key of this cell's calibration record. Calibration measures sparsity on the config's own
        calibration prompts (``calibration.samples`` at ``calibration.seed``), never on the task's samples, so
        the task's sample count and seed stay out of it: evaluating more samples reuses the calibration."""
        spec = self.spec(config)
        for key in ("samples", "seed"):
            spec.pop(key)
        return config_hash({"calibration_of": spec})

    def name(self, config: SweepConfig) -> str:
        """Directory name: ``<task>-L<length>-n<samples>-s<seed>--<method>--<param>=<value>,...--<hash8>``."""
        length = "Lfile" if self.length is None else f"L{self.length}"
        samples = "nall" if self.samples is None else f"n{self.samples}"
        parts = [f"{self.task}-{length}-{samples}-s{self.seed}", self.series]
        # unset optional parameters (None, e.g. no router) are left out of the name; the hash still has them
        params = [f"{k}={_value_text(v)}" for k, v in sorted(self.identity_params().items()) if v is not None]
        if self.target_sparsity is not None:
            params.append(f"target_sparsity={_value_text(self.target_sparsity)}")
            if self.per_layer:
                params.append("per_layer")
        if self.layer_scales is not None:
            params.append("layer_scales")
        if params:
            parts.append(",".join(params))
        parts.append(self.hash(config)[:8])
        return _UNSAFE.sub("-", "--".join(parts))


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if v is None:
        return "none"
    return str(v)


def method_defaults(method: str) -> dict[str, Any]:
    """Every parameter of a method with its default, read from the method's parameter dataclass."""
    from dash_eval.kernels import get_method

    params_cls = get_method(method).params_cls
    out: dict[str, Any] = {}
    for f in dataclasses.fields(params_cls):
        if f.metadata.get("tensor"):
            continue  # a tensor (the router) is no sweep value; the model's router is model.router
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def expand_cells(config: SweepConfig) -> list[Cell]:
    """Every cell of the sweep in a fixed order: methods (config order), grid points, target sparsities,
    then tasks and lengths. The order is what ``--shard`` splits, so it depends only on the config."""
    cells: list[Cell] = []
    for entry_index, entry in enumerate(config.methods):
        defaults = method_defaults(entry.method)
        targets: tuple[float | None, ...] = entry.target_sparsity or (None,)
        for point in grid_points(entry):
            params = {**defaults, **point}
            for target in targets:
                cell_params = dict(params)
                if target is not None:
                    cell_params.pop(entry.calibrate, None)
                explicit = tuple(sorted(point))
                for task in config.tasks:
                    for length in task.lengths:
                        cells.append(
                            Cell(
                                index=len(cells),
                                method=entry.method,
                                params=cell_params,
                                explicit=explicit,
                                task=task.label,
                                length=length,
                                samples=task.samples,
                                seed=task.seed,
                                task_spec=task,
                                target_sparsity=target,
                                calibrate=entry.calibrate if target is not None else None,
                                calibrate_range=entry.calibrate_range if target is not None else None,
                                label=entry.series,
                                router=entry.router,
                                per_layer=entry.per_layer and target is not None,
                                layer_scales=entry.layer_scales,
                                entry=entry_index,
                            )
                        )
    return cells


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1-based) -> ``(i, n)``; errors name the value and what is accepted."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise ValueError(f"--shard: bad value {text!r}; accepted: i/n with 1 <= i <= n, e.g. 1/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise ValueError(f"--shard: bad value {text!r}; accepted: i/n with 1 <= i <= n, e.g. 1/4")
    return i, n


def shard_cells(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """Shard ``i/n`` takes cells ``i-1, i-1+n, ...`` of the expansion order: deterministic, disjoint, and
    together complete; striding spreads slow methods and long lengths over all shards."""
    if shard is None:
        return list(cells)
    i, n = shard
    return [c for c in cells if c.index % n == i - 1]
