"""The ``methods`` entries of a sweep config: fixed parameters, grids, target sparsities, labels and
routers, each checked by the method's own parameter dataclass (``get_method(name).params_cls``), so that
no branch here is specific to one method."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

from dash_eval.evals.config_check import NAME_PATTERN, Checker, is_int, is_number
from dash_eval.evals.sweep_calibrate import default_search_ends

METHOD_RESERVED = {"method", "grid", "target_sparsity", "calibrate", "calibrate_range", "calibrate_per_layer",
                   "label", "router", "layer_scales"}


@dataclass(frozen=True)
class MethodEntry:
    """One entry of ``methods``: fixed parameters, a grid over some of them, optional target sparsities."""

    method: str
    fixed: dict[str, Any]
    grid: dict[str, tuple[Any, ...]]
    target_sparsity: tuple[float, ...] = ()
    calibrate: str | None = None  # the parameter that target_sparsity calibrates
    calibrate_range: tuple[float, float] | None = None
    label: str = ""  # the series name in reports (default: the method's name)
    router: str | None = None  # this entry's router ("none": mean pooling); None: the model's router
    per_layer: bool = False  # calibrate dash's scale per layer (dash_models.layer_scales)
    layer_scales: str | None = None  # fixed per-layer multipliers of scale: a JSON file or a router directory

    @property
    def series(self) -> str:
        return self.label or self.method


def parse_router(c: Checker, raw: Any, path: str) -> str | None:
    from dash_eval.dash_models.router import NO_ROUTER

    if raw is None:
        return None
    router = c.string(raw, path)
    if router is not None and router != NO_ROUTER and not os.path.exists(router):
        c.error(
            path,
            f"{router!r} does not exist; accepted: a router directory or .safetensors file (dash-eval "
            f"fit-router writes one), or {NO_ROUTER!r} for mean-pooled block summaries",
        )
        return None
    return router


def _parse_layer_scales(c: Checker, raw: Any, path: str, method: str, fields: dict[str, Any],
                        per_layer: bool) -> str | None:
    """``layer_scales``: fixed per-layer multipliers of the routing ``scale`` (a JSON file, or a router
    directory whose ``router.json`` carries them); read here, so a bad file stops the sweep before it runs."""
    from dash_eval.dash_models.layer_scales import load_layer_scales

    value = c.string(raw, path)
    if value is None:
        return None
    if "scale" not in fields:
        c.error(path, f"method {method} has no routing 'scale' to multiply per layer; accepted only for methods "
                "with a 'scale' parameter (dash)")
        return None
    if per_layer:
        c.error(path, "calibrate_per_layer computes its own per-layer multipliers; give one or the other")
        return None
    try:
        load_layer_scales(value)
    except ValueError as exc:  # its message names the problem and what is accepted
        c.error(path, str(exc))
        return None
    return value


def _param_fields(params_cls: type) -> dict[str, dataclasses.Field]:
    # tensor-valued fields (a router) are not config values; the model's router comes from model.router
    return {f.name: f for f in dataclasses.fields(params_cls) if not f.metadata.get("tensor")}


def coerce_value(f: dataclasses.Field, value: Any) -> Any:
    # YAML reads ``scale: 1`` as an int; a float parameter keeps one spelling so that the cell name and
    # hash of ``1`` and ``1.0`` agree.
    if isinstance(f.default, float) and is_int(value):
        return float(value)
    return value


def _validate_params(params_cls: type, values: dict[str, Any]) -> str | None:
    try:
        params_cls(**values)
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def parse_method(c: Checker, raw: Any, path: str) -> MethodEntry | None:
    from dash_eval.kernels import get_method, method_names

    m = c.mapping(raw, path)
    if m is None:
        return None
    names = tuple(method_names())
    if m.get("method") is None:
        c.error(f"{path}.method", f"missing; accepted: {', '.join(names)}")
        known = set(METHOD_RESERVED).union(*(_param_fields(get_method(n).params_cls) for n in names))
        c.unknown_keys({k: v for k, v in m.items() if k != "method"}, known, path)
        return None
    name = c.string(m.get("method"), f"{path}.method")
    if name is None:
        return None
    if name not in names:
        c.error(f"{path}.method", f"unknown method {name!r}; accepted: {', '.join(names)}")
        return None
    params_cls = get_method(name).params_cls
    fields = _param_fields(params_cls)
    n_errors = len(c.errors)
    c.unknown_keys({k: v for k, v in m.items() if k not in fields}, METHOD_RESERVED, path)
    if len(c.errors) > n_errors:
        c.errors[n_errors:] = [
            e + (f"; parameters of {name}: {', '.join(fields) or '(none)'}" if e.startswith(path) else "")
            for e in c.errors[n_errors:]
        ]
    fixed = {k: coerce_value(fields[k], v) for k, v in m.items() if k in fields}
    for key, value in fixed.items():
        if isinstance(value, (list, dict)):
            c.error(f"{path}.{key}", f"expected a single value, got {value!r}; put lists under 'grid'")
    grid: dict[str, tuple] = {}
    if "grid" in m:
        g = c.mapping(m["grid"], f"{path}.grid") or {}
        if isinstance(m["grid"], dict) and not g:
            c.error(f"{path}.grid", "empty; accepted: a mapping of parameter: [values], or no 'grid' key")
        for key, values in g.items():
            gpath = f"{path}.grid.{key}"
            if key not in fields:
                c.error(gpath, f"unknown parameter {key!r} of {name}; accepted: {', '.join(fields) or '(none)'}")
                continue
            if key in fixed:
                c.error(gpath, f"{key!r} is both fixed ({path}.{key}) and in the grid; give it once")
                continue
            values = c.list_of(values, gpath)
            if values is None:
                continue
            seen: list = []
            for j, v in enumerate(values):
                if v in seen:
                    c.error(f"{gpath}[{j}]", f"value {v!r} listed twice")
                seen.append(v)
            grid[key] = tuple(coerce_value(fields[key], v) for v in values)
    targets: tuple[float, ...] = ()
    knob = None
    knob_range = None
    if "target_sparsity" in m:
        tpath = f"{path}.target_sparsity"
        raw_t = m["target_sparsity"]
        items = raw_t if isinstance(raw_t, list) else [raw_t]
        if not items:
            c.error(tpath, "empty list; accepted: a number strictly between 0 and 1, or a non-empty list of them")
        parsed = []
        for j, v in enumerate(items):
            p = f"{tpath}[{j}]" if isinstance(raw_t, list) else tpath
            if not is_number(v) or not 0.0 < v < 1.0:
                c.error(p, f"bad value {v!r}; accepted: a number strictly between 0 and 1")
            elif float(v) in parsed:
                c.error(p, f"value {v!r} listed twice")
            else:
                parsed.append(float(v))
        targets = tuple(parsed)
        knob = m.get("calibrate")
        if knob is None:
            knob = next((k for k in ("scale", "topk") if k in fields), None)
            if knob is None:
                c.error(
                    tpath,
                    f"method {name} has no 'scale' or 'topk' parameter to calibrate; name one with "
                    f"'calibrate' (parameters: {', '.join(fields) or '(none)'})",
                )
        elif knob not in fields:
            c.error(f"{path}.calibrate", f"unknown parameter {knob!r} of {name}; accepted: {', '.join(fields)}")
            knob = None
        if knob is not None and (knob in fixed or knob in grid):
            where = f"{path}.{knob}" if knob in fixed else f"{path}.grid.{knob}"
            c.error(where, f"{knob!r} is calibrated by target_sparsity; give either {knob} or target_sparsity")
        if "calibrate_range" in m:
            r = m["calibrate_range"]
            integer = knob is not None and is_int(fields[knob].default)
            if (
                not isinstance(r, list)
                or len(r) != 2
                or not all(is_number(x) and math.isfinite(x) for x in r)
                or not (0 <= r[0] if integer else 0 < r[0])
                or not r[0] < r[1]
            ):
                bound = "0 <= low < high" if integer else "0 < low < high"
                c.error(f"{path}.calibrate_range", f"bad value {r!r}; accepted: [low, high], finite, with {bound}")
            elif integer and not math.ceil(r[0]) < math.floor(r[1]):
                c.error(f"{path}.calibrate_range", f"bad value {r!r}: {knob} is an integer and the range holds fewer "
                        "than two integers; accepted: [low, high] with integers 0 <= low < high")
            else:
                knob_range = (r[0], r[1])
    elif "calibrate" in m or "calibrate_range" in m or "calibrate_per_layer" in m:
        key = next(k for k in ("calibrate", "calibrate_range", "calibrate_per_layer") if k in m)
        c.error(f"{path}.{key}", "only meaningful with target_sparsity")
    per_layer = False
    if "calibrate_per_layer" in m and targets:
        v = m["calibrate_per_layer"]
        if not isinstance(v, bool):
            c.error(f"{path}.calibrate_per_layer", f"bad value {v!r}; accepted: true or false")
        elif v and knob != "scale":
            c.error(f"{path}.calibrate_per_layer", f"per-layer calibration multiplies the routing 'scale' per "
                    f"layer; accepted only where target_sparsity calibrates 'scale' (method {name} calibrates "
                    f"{knob!r})")
        else:
            per_layer = v
    label = ""
    if "label" in m:
        label = c.string(m["label"], f"{path}.label", pattern=NAME_PATTERN,
                         accepted="letters, digits, '.', '_', '-'") or ""
    layer_scales = None
    if "layer_scales" in m:
        layer_scales = _parse_layer_scales(c, m["layer_scales"], f"{path}.layer_scales", name, fields, per_layer)
    router = None
    if "router" in m:
        takes_router = "router" in params_cls.field_names()
        if not takes_router:
            routed = [n for n in names if "router" in get_method(n).params_cls.field_names()]
            c.error(f"{path}.router", f"method {name} has no router; accepted only for: {', '.join(routed)}")
        else:
            router = parse_router(c, m["router"], f"{path}.router")

    if len(c.errors) > n_errors:
        return None
    # Values one at a time first, so that an error points at the grid entry that causes it.
    bad = False
    alone: dict[str, str] = {}
    if (msg := _validate_params(params_cls, fixed)) is not None:
        # every parameter that is wrong on its own, at its own path; else the combination
        alone = {k: m for k, v in fixed.items() if (m := _validate_params(params_cls, {k: v})) is not None}
        for key, key_msg in alone.items():
            c.error(f"{path}.{key}", key_msg)
        if not alone:
            c.error(path, f"invalid parameters {fixed}: {msg}")
        bad = True
    # grid values are checked with the fixed parameters that are valid on their own: with a bad one, every
    # value would fail for its fault, repeating its error once per grid value
    base = {k: v for k, v in fixed.items() if k not in alone}
    for key, values in grid.items():
        for j, v in enumerate(values):
            if (msg := _validate_params(params_cls, {**base, key: v})) is not None:
                c.error(f"{path}.grid.{key}[{j}]", msg)
                bad = True
    if not bad:
        entry = MethodEntry(name, fixed, grid, targets, knob, knob_range, label, router, per_layer, layer_scales)
        for point in grid_points(entry):
            if (msg := _validate_params(params_cls, point)) is not None:
                c.error(f"{path}.grid", f"the combination {point} is invalid: {msg}")
                bad = True
                break
        if knob is not None:
            # the ends of the search, given or default, must be values the method takes
            integer = is_int(fields[knob].default)
            ends = knob_range if knob_range is not None else default_search_ends(integer)
            where = f"{path}.calibrate_range" if knob_range is not None else f"{path}.calibrate"
            for end, rounded in zip(ends, (math.ceil, math.floor)):
                value = rounded(end) if integer else float(end)  # the integers the search starts from
                if (msg := _validate_params(params_cls, {**fixed, knob: value})) is not None:
                    hint = "" if knob_range is not None else (
                        f" (the default search range starts there); give calibrate_range: [low, high] with values "
                        f"{knob} accepts")
                    c.error(where, f"{knob}={value!r} is invalid: {msg}{hint}")
                    bad = True
                    break
        if not bad:
            return entry
    return None


def grid_points(entry: MethodEntry) -> list[dict[str, Any]]:
    """The grid's points in a fixed order (the YAML's key order, last key fastest), each merged with the
    fixed parameters."""
    points: list[dict[str, Any]] = [dict(entry.fixed)]
    for key, values in entry.grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points
