"""Measured sparsity per lm-eval request: batch rows go to the right requests, merging is exact, right
padding is kept out, and batch sizes above 1 give the same answers and figures as batch size 1."""

import pytest
import torch
from dash_eval.dash_models.tally import PhaseTally
from dash_eval.evals._lm_eval_sparsity import SampleRecorder, merge_tallies, phase_figures
from lm_eval.api.instance import Instance


def _tally(values, attended=0, causal=0):
    tally = PhaseTally(attended_pairs=attended, causal_pairs=causal)
    tally.add_hist(torch.tensor(values, dtype=torch.int64))
    return tally


def _request(kind, task, doc_id, args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0, metadata=(task, doc_id, 1))


def test_merged_percentiles_equal_those_of_all_values():
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randint(0, 40, (n,), generator=gen) for n in (7, 130, 1, 64)]
    merged = merge_tallies(_tally(p.tolist(), attended=3, causal=10) for p in parts)
    whole = _tally(torch.cat(parts).tolist(), attended=12, causal=40)
    assert merged.summary() == whole.summary()


def test_generate_rows_go_to_their_requests_whatever_the_order():
    recorder = SampleRecorder()
    gk = {"until": ["\n"]}
    reqs = [_request("generate_until", "t", i, (f"ctx{i}", gk)) for i in range(3)]
    rows = {"prefill": [_tally([1, 1]), _tally([5, 5, 5])], "decode": [_tally([2]), _tally([6])]}
    with recorder.serving("generate_until", reqs):
        # HFLM sorts by length: this batch holds ctx2 then ctx0, and reports results in that row order.
        recorder.rows_done(rows)
        recorder.on_result("generate_until", ("ctx2", gk))
        recorder.on_result("generate_until", ("ctx0", gk))
        recorder.rows_done({"prefill": [_tally([3])], "decode": []})
        recorder.on_result("generate_until", ("ctx1", gk))
    docs = recorder.doc_figures()
    assert docs[("t", 2)]["prefill"]["active_blocks_mean"] == 1.0
    assert docs[("t", 2)]["decode"]["active_blocks_mean"] == 2.0
    assert docs[("t", 0)]["prefill"]["active_blocks_mean"] == 5.0
    assert docs[("t", 1)]["prefill"]["queries"] == 1 and "decode" not in docs[("t", 1)]


def test_loglikelihood_rows_shared_by_a_group_count_once():
    recorder = SampleRecorder()
    reqs = [_request("loglikelihood", "mc", 0, ("Q", c)) for c in (" A", " B")]
    reqs.append(_request("loglikelihood", "mc", 1, ("R", " C")))
    with recorder.serving("loglikelihood", reqs):
        recorder.rows_done({"prefill": [_tally([4] * 10, 10, 20), _tally([1] * 3, 3, 3)], "decode": []})
        recorder.next_row()  # row 0 answers both choices of doc 0 (one-token continuations share logits)
        recorder.on_result("loglikelihood", ("Q", " B"))
        recorder.on_result("loglikelihood", ("Q", " A"))
        recorder.next_row()
        recorder.on_result("loglikelihood", ("R", " C"))
    results = {"results": {"mc": {"acc,none": 1.0}}, "samples": {"mc": [{"doc_id": 0}, {"doc_id": 1}]}}
    recorder.annotate(results, attention={"method": "dash", "params": {"alpha": 1.5}})
    task = results["dash_attention"]["tasks"]["mc"]
    assert task["samples_measured"] == 2
    assert task["prefill"]["queries"] == 13 and task["prefill"]["causal_pairs"] == 23
    assert results["results"]["mc"]["sparsity,prefill"] == pytest.approx(1 - 13 / 23)
    assert "sparsity,decode" not in results["results"]["mc"]
    assert results["samples"]["mc"][0]["dash_attention"]["prefill"]["queries"] == 10
    assert results["dash_attention"]["method"] == "dash"
    assert recorder.doc_figures() == {}  # annotate starts the next evaluation empty


def test_groups_and_renumbered_docs():
    recorder = SampleRecorder()
    reqs = [_request("generate_until", name, 0, (name, {})) for name in ("a", "b")]
    with recorder.serving("generate_until", reqs):
        recorder.rows_done({"prefill": [_tally([2], 1, 4), _tally([4], 3, 4)], "decode": []})
        recorder.on_result("generate_until", ("a", {}))
        recorder.on_result("generate_until", ("b", {}))
    results = {
        "results": {"g": {}, "a": {}, "b": {}},
        "group_subtasks": {"g": ["a", "b"]},
        "samples": {"a": [{"doc_id": 7}], "b": [{"doc_id": 0}]},
    }
    recorder.annotate(results, attention={"method": "full", "params": {}}, doc_indices={"a": [7]})
    assert results["results"]["g"]["sparsity,prefill"] == pytest.approx(1 - 4 / 8)
    assert results["dash_attention"]["tasks"]["g"]["samples_measured"] == 2
    assert results["samples"]["a"][0]["dash_attention"]["prefill"]["active_blocks_mean"] == 2.0


def test_right_padding_mask_finds_real_lengths():
    recorder = SampleRecorder()
    recorder.expect_inputs([[5, 6, 7, 8], [9, 0], [3, 4, 0]])
    inps = torch.tensor([[5, 6, 7, 8], [9, 0, 0, 0], [3, 4, 0, 0]])
    mask = recorder.right_padding_mask(inps)
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert recorder.right_padding_mask(torch.tensor([[5, 6, 7, 8]])) is None  # nothing padded
    assert recorder.right_padding_mask(torch.tensor([[1, 2, 0, 0]])) is None  # unknown row: no guess


def test_phase_figures_skip_phases_without_queries():
    assert set(phase_figures([{"prefill": _tally([1], 1, 2), "decode": PhaseTally()}])) == {"prefill"}


@pytest.mark.slow
def test_batch_sizes_give_the_same_answers_and_figures():
    from dash_eval.evals.lm_model import DashLM

    lm = DashLM(pretrained="default", method="dash", block_size=8, scale=1.0, device="cpu", dtype="float32")
    words = "The quick brown fox jumps over the lazy dog near the river bank. "
    contexts = [f"{words * n}Repeat the first word:" for n in (3, 6)]
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 2, "do_sample": False}

    def run(batch_size):
        lm.batch_size_per_gpu = batch_size
        gen = [_request("generate_until", "g", i, (c, dict(gen_kwargs))) for i, c in enumerate(contexts)]
        ll = [_request("loglikelihood", "l", i, (c, " The")) for i, c in enumerate(contexts)]
        answers = lm.generate_until(gen), lm.loglikelihood(ll)
        figures = lm._recorder.doc_figures()
        lm.reset_sparsity()
        return answers, figures

    (gen1, ll1), fig1 = run(1)
    (gen2, ll2), fig2 = run(2)
    assert gen1 == gen2
    assert [x[1] for x in ll1] == [x[1] for x in ll2]
    assert [x[0] for x in ll1] == pytest.approx([x[0] for x in ll2], abs=2e-3)
    assert fig1.keys() == fig2.keys() and len(fig1) == 4
    for key in fig1:
        for phase in fig1[key]:
            assert fig1[key][phase]["queries"] == fig2[key][phase]["queries"], (key, phase)
            assert fig1[key][phase]["causal_pairs"] == fig2[key][phase]["causal_pairs"], (key, phase)
            assert fig1[key][phase]["sparsity"] == pytest.approx(fig2[key][phase]["sparsity"], abs=0.02)
    assert 0.0 < fig1[("g", 1)]["prefill"]["sparsity"] < 1.0


@pytest.mark.parametrize("values", [list(range(1, 8)), list(range(1, 11)), [0, 0, 3, 3, 3, 9], [4]])
def test_active_block_percentiles_are_nearest_rank(values):
    """p10 / p50 / p90 are nearest-rank percentiles (the ceil(q * n)-th smallest value), checked against the sorted
    values themselves, not against another tally (a wrong rank rule is the same on both sides of a merge)."""
    import math

    summary = _tally(values).summary()
    ordered = sorted(values)
    for q, key in ((0.10, "active_blocks_p10"), (0.50, "active_blocks_p50"), (0.90, "active_blocks_p90")):
        rank = max(1, math.ceil(q * len(ordered)))
        assert summary[key] == ordered[rank - 1], (key, values)
    assert summary["active_blocks_mean"] == pytest.approx(sum(values) / len(values))
