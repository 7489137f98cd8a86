"""Independent brute-force versions of the four methods, written from METHODS.md one query at a time
in float64. Slow and obvious on purpose: the tests hold every implementation to them."""

from __future__ import annotations

import math

import torch
from entmax import entmax15, entmax_bisect, sparsemax


def _entmax_ref(z: torch.Tensor, alpha: float) -> torch.Tensor:
    if alpha == 2.0:
        return sparsemax(z, dim=-1)
    if alpha == 1.5:
        return entmax15(z, dim=-1)
    return entmax_bisect(z, alpha=alpha, dim=-1, n_iter=200)


def _forced(cur: int, init_blocks: int, local_blocks: int) -> set[int]:
    return {j for j in range(cur + 1) if j < init_blocks or j > cur - local_blocks}


def _attend(q_i, keys, values, pos, allowed_tokens, bias_of_token, scale):
    idx = sorted(allowed_tokens)
    logits = torch.stack([q_i @ keys[t] * scale + bias_of_token(t) for t in idx])
    w = torch.softmax(logits, 0)
    return (w[:, None] * values[idx]).sum(0)


def _loop(q, k, v, scale, per_query):
    """Run ``per_query(qs_group [G, D], keys, values, pos) -> (outs [G, D], attended_tokens set)``."""
    q, k, v = q.double(), k.double(), v.double()
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    out = torch.zeros(b, hq, nq, d, dtype=torch.float64)
    attended = causal = 0
    for bi in range(b):
        for h in range(hkv):
            for i in range(nq):
                pos = nk - nq + i
                qs = q[bi, h * g : (h + 1) * g, i]
                o, tokens = per_query(qs, k[bi, h], v[bi, h], pos, h)
                out[bi, h * g : (h + 1) * g, i] = o
                attended += len(tokens)
                causal += pos + 1
    return out, attended, causal


def full_bruteforce(q, k, v, *, block_size=64, softmax_scale=None):
    scale = softmax_scale or q.shape[-1] ** -0.5

    def per_query(qs, keys, values, pos, h):
        tokens = set(range(pos + 1))
        return torch.stack([_attend(qi, keys, values, pos, tokens, lambda t: 0.0, scale) for qi in qs]), tokens

    return _loop(q, k, v, scale, per_query)


def dash_bruteforce(q, k, v, *, alpha=1.5, block_size=64, scale=1.0, sigma=1e6, init_blocks=0, local_blocks=1,
                    router=None, softmax_scale=None):
    sm = softmax_scale or q.shape[-1] ** -0.5
    C = block_size
    d = q.shape[-1]
    u_all = None if router is None else router.double().reshape(k.shape[1], d)

    def per_query(qs, keys, values, pos, h):
        cur = pos // C
        cands = list(range(cur))  # complete past blocks
        kbar = []
        for j in cands:
            blk = keys[j * C : (j + 1) * C]
            u = torch.zeros(d, dtype=torch.float64) if u_all is None else u_all[h]
            w = torch.softmax(blk @ u * sm, 0)
            kbar.append((w[:, None] * blk).sum(0))
        forced = _forced(cur, init_blocks, local_blocks)
        routed, beta = set(), {}
        if cands:
            kb = torch.stack(kbar)
            ps = torch.stack([_entmax_ref(scale * (qi @ kb.T) * sm, alpha) for qi in qs])
            pbar = ps.mean(0)
            routed = {j for j in cands if pbar[j] > 0}
            mean_log = sum(math.log(pbar[j]) for j in routed) / len(routed)
            for j in routed - forced:
                beta[j] = (math.log(pbar[j]) - mean_log) / sigma
        blocks = routed | forced
        tokens = {t for t in range(pos + 1) if t // C in blocks}
        outs = [_attend(qi, keys, values, pos, tokens, lambda t: beta.get(t // C, 0.0), sm) for qi in qs]
        return torch.stack(outs), tokens

    return _loop(q, k, v, sm, per_query)


def _kernel_block_scores(qs, keys, pos, C, ks, stride, sm, pool):
    nk = keys.shape[0]
    kernels = [m for m in range((nk - ks) // stride + 1)] if nk >= ks else []
    visible = [m for m in kernels if m * stride + ks - 1 <= pos]
    kc = {m: keys[m * stride : m * stride + ks].mean(0) for m in visible}
    score = {m: 0.0 for m in visible}
    for qi in qs:  # softmax per query head, summed over the group
        if not visible:
            break
        logits = torch.stack([qi @ kc[m] * sm for m in visible])
        p = torch.softmax(logits, 0)
        for m, pm in zip(visible, p):
            score[m] += float(pm)
    out = {}
    for j in range(pos // C):
        overlapping = {}
        for m in visible:
            lo, hi = max(m * stride, j * C), min(m * stride + ks, (j + 1) * C)
            if hi > lo:
                overlapping[m] = (hi - lo) / stride
        if pool == "max":  # InfLLM-V2: kernels j*r - 1 .. j*r + r - 1 whatever the kernel size
            r = C // stride
            pooled = [m for m in visible if j * r - 1 <= m <= j * r + r - 1]
            out[j] = max((score[m] for m in pooled), default=float("-inf"))
        else:
            out[j] = sum(score[m] * w for m, w in overlapping.items())
    return out


def _topk_select(scores, forced, topk):
    others = [j for j in scores if j not in forced]
    others.sort(key=lambda j: (scores[j], j), reverse=True)  # ties: the more recent block first
    return set(others[:topk]) | forced


def infllmv2_bruteforce(q, k, v, *, block_size=64, kernel_size=32, kernel_stride=16, init_blocks=1,
                        local_blocks=32, topk=63, softmax_scale=None):
    sm = softmax_scale or q.shape[-1] ** -0.5
    C = block_size

    def per_query(qs, keys, values, pos, h):
        cur = pos // C
        scores = _kernel_block_scores(qs, keys, pos, C, kernel_size, kernel_stride, sm, "max")
        blocks = _topk_select(scores, _forced(cur, init_blocks, local_blocks), topk)
        tokens = {t for t in range(pos + 1) if t // C in blocks}
        return torch.stack([_attend(qi, keys, values, pos, tokens, lambda t: 0.0, sm) for qi in qs]), tokens

    return _loop(q, k, v, sm, per_query)


def nsa_bruteforce(q, k, v, *, block_size=64, kernel_size=32, kernel_stride=16, init_blocks=1, local_blocks=2,
                   topk=13, window=512, softmax_scale=None):
    sm = softmax_scale or q.shape[-1] ** -0.5
    C = block_size

    def per_query(qs, keys, values, pos, h):
        cur = pos // C
        scores = _kernel_block_scores(qs, keys, pos, C, kernel_size, kernel_stride, sm, "weighted")
        blocks = _topk_select(scores, _forced(cur, init_blocks, local_blocks), topk)
        tokens = {t for t in range(pos + 1) if t // C in blocks or t > pos - window}
        return torch.stack([_attend(qi, keys, values, pos, tokens, lambda t: 0.0, sm) for qi in qs]), tokens

    return _loop(q, k, v, sm, per_query)


BRUTEFORCE = {
    "full": full_bruteforce,
    "dash": dash_bruteforce,
    "infllmv2": infllmv2_bruteforce,
    "nsa": nsa_bruteforce,
}
