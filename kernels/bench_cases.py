"""What ``dash-eval bench`` runs: its cases (named shape sets, or cases built from the command line) and the
structured random inputs every case is checked and timed on. See docs/bench.md."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch


@dataclasses.dataclass
class Case:
    name: str
    method: str
    tokens: int
    q_heads: int = 32
    kv_heads: int = 2
    head_dim: int = 128
    queries: int | None = None  # None: prefill (all tokens are queries); 1: decode
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    target_sparsity: float | None = None  # dash: calibrate `scale` on the inputs to reach this
    flex: bool = False  # also time FlexAttention with this call's selection
    noise: float = 1.0  # per-query noise against the shared direction of a 256-query segment (see inputs)
    batch: int = 1  # sequences of the same length, each with its own random inputs

    @property
    def nq(self) -> int:
        return self.tokens if self.queries is None else self.queries


def _dash(name, n, hkv, sp, flex=False, **kw):
    return Case(name, "dash", n, kv_heads=hkv, target_sparsity=sp, flex=flex, **kw)


def _geometry_cases() -> list[Case]:
    """Each method's prefill and decode at head dim 256 (2 KV heads of 32) and at the embedded SmolLM2's
    geometry (9 query heads over 3 KV heads, head dim 64: a group of 3, padded to 4). Prefill is long enough for
    ``dash`` to reach 75% over all queries on these inputs (at 4k the early queries' few blocks cap it near 64%)."""
    cases = []
    for tag, n_prefill, n_decode, geometry in (
        ("d256", 16384, 16384, {"kv_heads": 2, "head_dim": 256}),
        ("smollm2", 8192, 32768, {"q_heads": 9, "kv_heads": 3, "head_dim": 64}),
    ):
        for kind, n, queries in (("", n_prefill, None), ("decode-", n_decode, 1)):
            cases.append(Case(f"geo-dash-{kind}{tag}", "dash", n, queries=queries, target_sparsity=0.75, **geometry))
            for method in ("nsa", "infllmv2"):
                cases.append(Case(f"geo-{method}-{kind}{tag}", method, n, queries=queries, **geometry))
    return cases


_INPUT = {"score_precision": "input"}

SHAPE_SETS: dict[str, list[Case]] = {
    # Small shapes: compile and correctness on the GPU in a few seconds.
    "smoke": [
        _dash("smoke-dash", 4096, 2, 0.5),
        Case("smoke-nsa", "nsa", 16384, kv_heads=2),
        Case("smoke-infllmv2", "infllmv2", 16384, kv_heads=2),
        _dash("smoke-dash-decode", 8192, 2, 0.75, queries=1),
        _dash("smoke-dash-alpha1.25-prior", 4096, 2, 0.5, params={"alpha": 1.25, "sigma": 1.0}),
        Case("smoke-nsa-decode", "nsa", 16384, kv_heads=2, queries=1),
        Case("smoke-infllmv2-decode", "infllmv2", 16384, kv_heads=2, queries=1),
    ],
    # The targets of issue 3 / PERF.md.
    "targets": [
        _dash("dash-32k-kv2-75", 32768, 2, 0.75, flex=True),
        _dash("dash-32k-kv2-87.5", 32768, 2, 0.875),
        _dash("dash-32k-kv8-75", 32768, 8, 0.75, flex=True),
        _dash("dash-32k-kv8-87.5", 32768, 8, 0.875),
        _dash("dash-32k-kv2-75-coherent", 32768, 2, 0.75, noise=0.25),
        _dash("dash-32k-kv8-75-coherent", 32768, 8, 0.75, noise=0.25),
        _dash("dash-32k-kv2-87.5-coherent", 32768, 2, 0.875, noise=0.25),
        _dash("dash-32k-kv8-87.5-coherent", 32768, 8, 0.875, noise=0.25),
        Case("nsa-64k-kv2", "nsa", 65536, kv_heads=2),
        Case("infllmv2-128k-kv2", "infllmv2", 131072, kv_heads=2),
        Case("nsa-64k-kv2-coherent", "nsa", 65536, kv_heads=2, noise=0.25),
        Case("infllmv2-128k-kv2-coherent", "infllmv2", 131072, kv_heads=2, noise=0.25),
        Case("nsa-decode-128k-kv2", "nsa", 131072, kv_heads=2, queries=1),
        Case("infllmv2-decode-128k-kv2", "infllmv2", 131072, kv_heads=2, queries=1),
        _dash("dash-128k-kv2-75", 131072, 2, 0.75),
        _dash("dash-decode-128k-kv2-75", 131072, 2, 0.75, queries=1),
        _dash("dash-decode-128k-kv8-75", 131072, 8, 0.75, queries=1),
        Case("nsa-decode-128k-kv8", "nsa", 131072, kv_heads=8, queries=1),
        Case("infllmv2-decode-128k-kv8", "infllmv2", 131072, kv_heads=8, queries=1),
    ],
    # Decode at 131,072 cached tokens only: the three sparse methods, 2 and 8 KV heads.
    "decode": [
        Case("nsa-decode-128k-kv2", "nsa", 131072, kv_heads=2, queries=1),
        Case("infllmv2-decode-128k-kv2", "infllmv2", 131072, kv_heads=2, queries=1),
        _dash("dash-decode-128k-kv2-75", 131072, 2, 0.75, queries=1),
        Case("nsa-decode-128k-kv8", "nsa", 131072, kv_heads=8, queries=1),
        Case("infllmv2-decode-128k-kv8", "infllmv2", 131072, kv_heads=8, queries=1),
        _dash("dash-decode-128k-kv8-75", 131072, 8, 0.75, queries=1),
    ],
    # Decode at 131,072 cached tokens with several sequences a step, as a server batches them: the dense step
    # reads every sequence's cache, the sparse one a quarter (dash) or less, and its fixed costs (routing
    # launches) are shared by the batch.
    "decode-batch": [
        case
        for batch in (4, 16)
        for hkv in (2, 8)
        for case in (
            Case(f"nsa-decode-128k-kv{hkv}-b{batch}", "nsa", 131072, kv_heads=hkv, queries=1, batch=batch),
            Case(f"infllmv2-decode-128k-kv{hkv}-b{batch}", "infllmv2", 131072, kv_heads=hkv, queries=1, batch=batch),
            _dash(f"dash-decode-128k-kv{hkv}-75-b{batch}", 131072, hkv, 0.75, queries=1, batch=batch),
        )
    ],
    # nsa and infllmv2 prefill at their defaults with both GQA ratios of the targets (32 query heads over
    # 2 or 8 KV heads): how the routing geometry fares away from the target shapes.
    "topk-prefill": [
        Case("nsa-32k-kv2", "nsa", 32768, kv_heads=2),
        Case("nsa-32k-kv8", "nsa", 32768, kv_heads=8),
        Case("infllmv2-32k-kv2", "infllmv2", 32768, kv_heads=2),
        Case("infllmv2-32k-kv8", "infllmv2", 32768, kv_heads=8),
    ],
    # nsa and infllmv2 at their defaults with the published kernels' score precision (kernel keys rounded to
    # bf16, one tensor-core product per kernel score; METHODS.md's float32 keys take two): the targets'
    # shapes, prefill and decode.
    "input-precision": [
        Case("nsa-64k-kv2-input", "nsa", 65536, kv_heads=2, params=_INPUT),
        Case("infllmv2-128k-kv2-input", "infllmv2", 131072, kv_heads=2, params=_INPUT),
        Case("nsa-decode-128k-kv2-input", "nsa", 131072, kv_heads=2, queries=1, params=_INPUT),
        Case("infllmv2-decode-128k-kv2-input", "infllmv2", 131072, kv_heads=2, queries=1, params=_INPUT),
        Case("nsa-decode-128k-kv8-input", "nsa", 131072, kv_heads=8, queries=1, params=_INPUT),
        Case("infllmv2-decode-128k-kv8-input", "infllmv2", 131072, kv_heads=8, queries=1, params=_INPUT),
        Case("nsa-32k-kv8-input", "nsa", 32768, kv_heads=8, params=_INPUT),
        Case("infllmv2-32k-kv8-input", "infllmv2", 32768, kv_heads=8, params=_INPUT),
    ],
    # dash away from alpha = 1.5 (entmax's general power in the routing and, with a sigma small enough to move
    # bf16 outputs, the prior rebuilt in the fine stage), prefill and decode at 75%.
    "alpha": [
        *(_dash(f"dash-32k-kv2-75-a{a}", 32768, 2, 0.75, params={"alpha": a}) for a in (1.25, 1.75, 2.0)),
        _dash("dash-32k-kv2-75-a1.25-prior", 32768, 2, 0.75, params={"alpha": 1.25, "sigma": 1.0}),
        *(_dash(f"dash-decode-128k-kv2-75-a{a}", 131072, 2, 0.75, queries=1, params={"alpha": a}) for a in (1.25, 2.0)),
        _dash("dash-decode-128k-kv2-75-a1.25-prior", 131072, 2, 0.75, queries=1,
              params={"alpha": 1.25, "sigma": 1.0}),
        # near alpha = 1 (a power of 20): routed blocks whose probability underflows, and the prior rebuilt on
        # blocks past a query's own (where the power overflows). sigma 5, not 1: beta = 20 log(tt) / sigma is
        # ill-conditioned near the support's edge (tt -> 0), and at sigma 1 the bf16 check's 2e-2 is within
        # the float32 rounding of tau (measured 2.7e-2 / 3.6e-2, five times the alpha-1.25 cases' errors)
        _dash("dash-32k-kv2-75-a1.05-prior", 32768, 2, 0.75, params={"alpha": 1.05, "sigma": 5.0}),
        _dash("dash-decode-128k-kv2-75-a1.05-prior", 131072, 2, 0.75, queries=1,
              params={"alpha": 1.05, "sigma": 5.0}),
    ],
    # Away from the targets' geometry, prefill and decode of the three methods: head dim 256 (fewer pipeline
    # stages fit in shared memory; with --dtype fp32 the top-k routing also narrows its score chunk) and the
    # embedded SmolLM2's 9 query heads over 3 KV heads at head dim 64 (a group of 3, padded to 4).
    "geometry": _geometry_cases(),
    # PERF.md's table of the authors' kernel: same shapes, our kernel at their densities (1 - sparsity).
    "perf-table": [
        _dash("table-16k-kv2-d56", 16384, 2, 0.44),
        _dash("table-16k-kv2-d30", 16384, 2, 0.70),
        _dash("table-32k-kv2-d40", 32768, 2, 0.60),
        _dash("table-32k-kv2-d19", 32768, 2, 0.81),
        _dash("table-64k-kv2-d30", 65536, 2, 0.70),
        _dash("table-32k-kv8-d15", 32768, 8, 0.85),
        _dash("table-32k-kv8-d7", 32768, 8, 0.93),
    ],
}


# --- inputs ---------------------------------------------------------------------------------------------


def structured_inputs(case: Case, dtype: torch.dtype, device: torch.device, seed: int = 0, segment: int = 256):
    """Random q, k, v with a routing structure: every 64-key block has a topic vector mixed into its keys,
    and the queries of each ``segment``-long stretch share a direction (per head) mixed into theirs, plus
    per-query noise of relative size ``case.noise``, so neighbouring queries prefer similar blocks. At
    ``noise=1`` (the default) neighbours still disagree often: a tile of queries visits the union of
    their blocks, reported as ``visited``; ``-coherent`` cases use ``noise=0.25``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    b, n, nq, d = case.batch, case.tokens, case.nq, case.head_dim
    hq, hkv = case.q_heads, case.kv_heads

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)

    topics = randn(b, hkv, -(-n // 64), d).repeat_interleave(64, dim=2)[:, :, :n]
    k = (randn(b, hkv, n, d) + topics).mul_(0.5)
    nseg = -(-n // segment)
    dirs = randn(b, hq, nseg, d).repeat_interleave(segment, dim=2)[:, :, n - nq : n]
    q = (randn(b, hq, nq, d).mul_(case.noise) + dirs).mul_(0.5)
    v = randn(b, hkv, n, d)
    return q.to(dtype), k.to(dtype), v.to(dtype)


# --- cases from the command line ------------------------------------------------------------------------

SPARSE_METHODS = ("dash", "nsa", "infllmv2")


def parse_list(flag: str, text: str, kind: type, *, low: float, high: float | None = None,
               open_low: bool = False) -> list:
    """``"a,b,c"`` as values of ``kind`` within bounds; a ValueError names the flag and what it accepts."""
    accepted = f"comma-separated {'integers' if kind is int else 'numbers'} {'>' if open_low else '>='} {low}"
    accepted += "" if high is None else f" and {'<' if kind is float else '<='} {high}"
    out = []
    for item in text.split(","):
        try:
            value = kind(item.strip())
        except ValueError:
            raise ValueError(f"{flag} {text!r}: {item.strip()!r} is not a number; accepted: {accepted}") from None
        too_low = value <= low if open_low else value < low
        too_high = high is not None and (value >= high if kind is float else value > high)
        if too_low or too_high:
            raise ValueError(f"{flag} {text!r}: {item.strip()} is out of range; accepted: {accepted}")
        out.append(value)
    return out


def _scalar(text: str) -> Any:
    """A ``--param`` value: an integer, a number, true/false, or else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_params(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--param KEY=VALUE`` (every chosen method that has ``KEY``) or ``METHOD.KEY=VALUE``, per method."""
    from dash_eval.kernels import get_method

    fields = {m: set(get_method(m).params_cls.field_names()) - {"router"} for m in methods}
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: accepted: KEY=VALUE or METHOD.KEY=VALUE, e.g. alpha=1.25, nsa.topk=32")
        scope, dot, name = key.rpartition(".")
        if dot and scope not in methods:
            raise ValueError(f"--param {item!r}: {scope!r} is not among --method ({', '.join(methods)})")
        targets = [scope] if dot else [m for m in methods if name in fields[m]]
        if not targets or (dot and name not in fields[scope]):
            known = "; ".join(f"{m}: {', '.join(sorted(fields[m]))}" for m in methods)
            raise ValueError(f"--param {item!r}: no parameter {name!r} in {' or '.join(targets or methods)}; "
                             f"accepted: {known}")
        for m in targets:
            out[m][name] = _scalar(value)
    return out


def model_geometry(name: str) -> tuple[int, int, int]:
    """``(query heads, KV heads, head dim)`` of a Hugging Face model's config: ``default`` (the embedded model), a
    model directory or a hub name. Only the config is read."""
    from dash_eval.dash_models.embedded import resolve_model_path
    from dash_eval.dash_models.loading import missing_model_dir
    from transformers import AutoConfig

    accepted = "accepted: default, a model directory or a hub name"
    path = resolve_model_path(name)
    if (problem := missing_model_dir(path)) is not None:
        raise ValueError(f"--model: {problem}; {accepted}")
    path = os.path.expanduser(path)  # transformers does not expand '~'
    try:  # the local Hugging Face cache first: offline, a hub name would otherwise retry the network for ~25 s
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError):
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"--model {name!r}: no model config could be read, neither from the local Hugging Face "
                             f"cache nor from the hub ({str(exc).splitlines()[0][:160]}); {accepted}") from None
    config = getattr(config, "text_config", None) or config  # a multimodal model's language part
    hq = getattr(config, "num_attention_heads", None)
    if not hq:
        raise ValueError(f"--model {name!r}: its config names no num_attention_heads; give --q-heads, --kv-heads and "
                         "--head-dim instead")
    hkv = getattr(config, "num_key_value_heads", None) or hq
    d = getattr(config, "head_dim", None) or (getattr(config, "hidden_size", None) or 0) // hq
    if not all(isinstance(x, int) and x > 0 for x in (hq, hkv, d)):
        raise ValueError(f"--model {name!r}: its config gives {hq} query heads, {hkv} KV heads and head dim {d}; "
                         "give --q-heads, --kv-heads and --head-dim instead")
    return hq, hkv, d


def custom_cases(methods: list[str], tokens: list[int], *, q_heads: int, kv_heads: int, head_dim: int,
                 decode: bool, sparsities: list[float], params: dict[str, dict[str, Any]], flex: bool,
                 dtype: torch.dtype) -> list[Case]:
    """One case per method, length and (``dash``) target sparsity, named after them. Raises ValueError, naming the
    flag, where the Triton kernels would not run: the benchmark would time the reference instead."""
    from dash_eval.kernels import get_method
    try:
        from dash_eval.kernels.triton_backend import triton_unsupported
    except ImportError as exc:
        raise ValueError(f"--method: the Triton kernels cannot be imported here ({exc}); install triton") from None

    if q_heads % kv_heads:
        raise ValueError(f"--q-heads {q_heads} --kv-heads {kv_heads}: accepted: query heads a multiple of KV heads")
    if sparsities and "dash" not in methods:
        raise ValueError("--sparsity: calibrates dash's scale; accepted only with --method dash (top-k methods' "
                         "sparsity follows from topk: --param topk=N)")
    if sparsities and "scale" in params.get("dash", {}):
        raise ValueError("--param scale with --sparsity: the sparsity target sets dash's scale; accepted: one or the "
                         "other")
    probe = torch.empty(1, q_heads, 1, head_dim, dtype=dtype, device="meta")
    cases = []
    for method in methods:
        try:
            made = get_method(method).make_params(**params[method])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--param: {exc}") from None
        why = triton_unsupported(method, probe, made)
        if why is not None:
            raise ValueError(f"--method {method}: the Triton kernels do not take {why}, so there would be no kernel "
                             "to time")
        for n in tokens:
            tag = f"{method}-{n}-q{q_heads}-kv{kv_heads}-d{head_dim}" + ("-decode" if decode else "")
            common = dict(q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim, queries=1 if decode else None,
                          params=params[method], flex=flex and not decode)
            if method == "dash" and sparsities:
                cases += [Case(f"{tag}-s{sp:g}", method, n, target_sparsity=sp, **common) for sp in sparsities]
            else:
                cases.append(Case(tag, method, n, **common))
    return cases


def describe_cases(cases: list[Case]) -> str:
    """A Markdown table of ``cases``: what ``dash-eval bench --list`` prints."""
    lines = ["| case | method | batch | tokens | kind | heads (q / kv) | head dim | dash sparsity | parameters "
             "| noise |", "|---|---|---:|---:|---|---|---:|---:|---|---:|"]
    for c in cases:
        kind = "prefill" if c.queries is None else f"decode ({c.nq} quer{'y' if c.nq == 1 else 'ies'})"
        params = ", ".join(f"{k}={v}" for k, v in sorted(c.params.items())) or "defaults"
        target = "" if c.target_sparsity is None else f"{c.target_sparsity:g}"
        lines.append(f"| {c.name} | {c.method} | {c.batch} | {c.tokens} | {kind} | {c.q_heads} / {c.kv_heads} | "
                     f"{c.head_dim} | {target} | {params} | {c.noise:g} |")
    return "\n".join(lines)
