"""Hugging Face integration on a tiny random Llama: exactness of `full`, padding, generation with
cache, config round trip, routers, the tally, and bad input."""

from __future__ import annotations

import pytest
import torch
from dash_eval.dash_models import (
    apply_attention,
    current_attention,
    get_tally,
    load_model,
    model_routers,
    patch_attention,
)

SPARSE = {
    "dash": {"block_size": 4, "scale": 400.0},
    "infllmv2": {"block_size": 4, "kernel_size": 4, "kernel_stride": 2, "local_blocks": 1, "topk": 2},
    "nsa": {"block_size": 4, "kernel_size": 4, "kernel_stride": 2, "topk": 1, "window": 3},
}


def _ids(n: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(3, 97, (batch, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_full_gives_the_models_own_logits(tiny):
    ids = _ids(50)
    tiny.set_attn_implementation("sdpa")
    own = tiny(ids).logits
    with patch_attention(tiny, "full"):
        patched = tiny(ids).logits
    assert torch.equal(own, patched)
    assert tiny.config._attn_implementation == "sdpa" and current_attention(tiny) is None


@torch.no_grad()
@pytest.mark.parametrize("method", ["full", *SPARSE])
def test_left_padded_batch_equals_rows_alone(tiny, method):
    a, b = _ids(40, 1), _ids(27, 2)
    batch = torch.zeros(2, 40, dtype=torch.long)
    mask = torch.zeros(2, 40, dtype=torch.long)
    batch[0], mask[0] = a[0], 1
    batch[1, 13:], mask[1, 13:] = b[0], 1
    with patch_attention(tiny, method, **SPARSE.get(method, {})):
        together = tiny(batch, attention_mask=mask).logits
        alone_b = tiny(b).logits
        alone_a = tiny(a).logits
    torch.testing.assert_close(together[0], alone_a[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(together[1, 13:], alone_b[0], rtol=1e-4, atol=1e-4)
    assert not torch.isnan(together).any()


@torch.no_grad()
@pytest.mark.parametrize("method", ["full", *SPARSE])
def test_generation_with_cache_equals_recomputing(tiny, method):
    ids = _ids(30, 3)
    with patch_attention(tiny, method, **SPARSE.get(method, {})):
        out = tiny.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0,
                            output_logits=True, return_dict_in_generate=True)
        seq = out.sequences
        for step, logits in enumerate(out.logits):
            prefix = seq[:, : ids.shape[1] + step]
            recomputed = tiny(prefix, use_cache=False).logits[:, -1]
            torch.testing.assert_close(logits, recomputed, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_left_padded_generation_equals_row_alone(tiny):
    a, b = _ids(33, 4), _ids(21, 5)
    batch = torch.zeros(2, 33, dtype=torch.long)
    mask = torch.zeros(2, 33, dtype=torch.long)
    batch[0], mask[0] = a[0], 1
    batch[1, 12:], mask[1, 12:] = b[0], 1
    with patch_attention(tiny, "dash", **SPARSE["dash"]):
        both = tiny.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        alone = tiny.generate(b, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(both[1, 33:], alone[0, 21:])


@torch.no_grad()
@pytest.mark.parametrize("method", ["full", *SPARSE])
def test_static_cache_generation_equals_dynamic(tiny, method):
    """A static cache hands attention all its slots, the empty ones past the current token too: without a mask
    (an unpadded prefill) the queries are the first positions, as in sdpa's plain causal; with one, the slots no
    query reaches. The methods must see only the keys that exist, in a left-padded batch too."""
    batch = torch.zeros(2, 22, dtype=torch.long)
    mask = torch.zeros_like(batch)
    batch[0], mask[0] = _ids(22, 13)[0], 1
    batch[1, 9:], mask[1, 9:] = _ids(13, 14)[0], 1
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None, output_logits=True,
              return_dict_in_generate=True)
    with patch_attention(tiny, method, **SPARSE.get(method, {})):
        for ids, row_mask in ((batch[:1], None), (batch, mask)):
            dynamic = tiny.generate(ids, attention_mask=row_mask, **kw)
            static = tiny.generate(ids, attention_mask=row_mask, cache_implementation="static", **kw)
            assert torch.equal(static.sequences, dynamic.sequences)
            torch.testing.assert_close(torch.stack(static.logits), torch.stack(dynamic.logits), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_right_padded_generation_is_refused_with_the_cause(tiny):
    batch = torch.zeros(2, 12, dtype=torch.long)
    mask = torch.zeros_like(batch)
    batch[0], mask[0] = _ids(12, 15)[0], 1
    batch[1, :7], mask[1, :7] = _ids(7, 16)[0], 1
    with patch_attention(tiny, "dash", **SPARSE["dash"]):
        tiny(batch, attention_mask=mask)  # a right-padded prefill is fine
        with pytest.raises(ValueError, match=r"attention_mask: kv_valid row 1: .*padding_side = 'left'"):
            tiny.generate(batch, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)


@torch.no_grad()
def test_tally_prefill_and_decode_apart(tiny):
    with patch_attention(tiny, "dash", **SPARSE["dash"]):
        tally = get_tally(tiny)
        tally.reset()
        tiny.generate(_ids(40, 6), max_new_tokens=4, do_sample=False, pad_token_id=0)
        pre, dec = tally.summary("prefill"), tally.summary("decode")
    layers, hkv = 2, 2
    assert pre["queries"] == 40 * layers * hkv and dec["queries"] == 3 * layers * hkv
    assert pre["causal_pairs"] == sum(range(1, 41)) * layers * hkv
    assert 0.0 < pre["sparsity"] < 1.0 and 0.0 <= dec["sparsity"] < 1.0
    assert pre["active_blocks_p10"] <= pre["active_blocks_p50"] <= pre["active_blocks_p90"]
    tally.reset()
    assert tally.summary("prefill")["queries"] == 0


@torch.no_grad()
@pytest.mark.parametrize("method", ["full", "dash", "nsa"])
def test_tally_reads_counts_only_when_asked(tiny, method, monkeypatch):
    """A patched layer leaves its counts where they are (on a GPU, reading them would stall the host once per
    layer); the tally reads them when it is read, and gives what each layer's own stats say."""
    import dash_eval.dash_models.tally as tally_module
    from dash_eval.kernels import sparse_attention

    reads = []
    real = tally_module._on_host
    monkeypatch.setattr(tally_module, "_on_host", lambda stats: reads.append(stats) or real(stats))
    seen = []
    real_add = tally_module.SparsityTally.add

    def add(self, phase, stats, layer=None):
        seen.append(stats)
        real_add(self, phase, stats, layer)

    monkeypatch.setattr(tally_module.SparsityTally, "add", add)
    with patch_attention(tiny, method, **SPARSE.get(method, {})):
        tally = get_tally(tiny)
        tally.reset()
        tiny(_ids(37, 8))
        assert len(seen) == 2 and not reads  # two layers queued, nothing read yet
        if method != "full":  # the sparse layers' counts stayed tensors (on a GPU: on the device)
            assert all(isinstance(s.attended_pairs, torch.Tensor) for s in seen)
        pre = tally.summary("prefill")
        assert len(reads) == 2
        # outside a patched model the counts are plain ints
        q = torch.randn(1, 4, 37, 16, generator=torch.Generator().manual_seed(0))
        k, v = q[:, :2].clone(), q[:, 2:].clone()
        _, direct = sparse_attention(q, k, v, method, return_stats=True, **SPARSE.get(method, {}))
        assert isinstance(direct.attended_pairs, int)
    assert pre["attended_pairs"] == sum(int(s.attended_pairs) for s in seen)
    assert pre["causal_pairs"] == sum(s.causal_pairs for s in seen) == sum(range(1, 38)) * 2 * 2


@torch.no_grad()
def test_padding_mask_read_once_per_forward(tiny, monkeypatch):
    """Every layer gets the same padding mask: the host reads it (and the rows' key spans) once a forward pass,
    and the counts come out as when each layer read it."""
    import dash_eval.dash_models.patch as patch_module
    import dash_eval.kernels.api as api_module

    calls = {"mask": 0, "spans": 0}
    for memo, name in ((patch_module._kv_valid_of, "mask"), (api_module.row_spans, "spans")):
        fn = memo.fn

        def counted(*args, fn=fn, name=name):
            calls[name] += 1
            return fn(*args)

        monkeypatch.setattr(memo, "fn", counted)
    batch = torch.zeros(2, 30, dtype=torch.long)
    mask = torch.zeros_like(batch)
    batch[0], mask[0] = _ids(30, 3)[0], 1
    batch[1, 9:], mask[1, 9:] = _ids(21, 4)[0], 1
    with patch_attention(tiny, "nsa", **SPARSE["nsa"]):
        tally = get_tally(tiny)
        tally.reset()
        tiny(batch, attention_mask=mask)
        rows = tally.row_summaries("prefill")
        tally.reset()
        tiny(batch[1:, 9:])
        alone = tally.summary("prefill")
    assert calls == {"mask": 1, "spans": 1}
    assert rows[1]["attended_pairs"] == alone["attended_pairs"] and rows[1]["queries"] == alone["queries"]


def test_remembered_result_follows_its_tensor():
    from dash_eval.kernels.common import LastResult

    seen = []
    memo = LastResult(lambda t, n: seen.append(n) or float(t.sum()) * n)
    t = torch.ones(3)
    assert memo(t, 2) == 6.0 and memo(t, 2) == 6.0 and len(seen) == 1
    assert memo(t, 3) == 9.0 and len(seen) == 2  # other arguments
    t.add_(1)  # changed in place
    assert memo(t, 3) == 18.0 and len(seen) == 3
    assert memo(torch.ones(3), 3) == 9.0 and len(seen) == 4  # another tensor
    with torch.inference_mode():  # no version counter: computed every time
        u = torch.ones(3)
        assert memo(u, 1) == 3.0 and memo(u, 1) == 3.0 and len(seen) == 6


@torch.no_grad()
def test_padded_batch_under_inference_mode(tiny):
    batch = torch.zeros(2, 20, dtype=torch.long)
    mask = torch.zeros_like(batch)
    batch[0], mask[0] = _ids(20, 5)[0], 1
    batch[1, 6:], mask[1, 6:] = _ids(14, 6)[0], 1
    with patch_attention(tiny, "dash", **SPARSE["dash"]):
        expected = tiny(batch, attention_mask=mask).logits
        with torch.inference_mode():
            got = tiny(batch, attention_mask=mask).logits
    torch.testing.assert_close(got, expected)


def test_tally_keeps_calls_it_could_not_read(monkeypatch):
    import dash_eval.dash_models.tally as tally_module
    from dash_eval.dash_models.tally import SparsityTally
    from dash_eval.kernels.full import full_attention_stats

    tally = SparsityTally()
    for layer in range(3):
        tally.add("prefill", full_attention_stats(1, 2, 5, 5, 4, "cpu"), layer=layer)
    real, failed, second = tally_module._on_host, [], tally._pending[1][1]

    def flaky(stats):
        if not failed and stats is second:
            failed.append(stats)
            raise RuntimeError("copy failed")
        return real(stats)

    monkeypatch.setattr(tally_module, "_on_host", flaky)
    with pytest.raises(RuntimeError):
        tally.summary()
    assert len(tally._pending) == 2  # the first call was counted, the failed one and the last wait
    assert tally.summary()["queries"] == 3 * 2 * 5 and not tally._pending


@torch.no_grad()
def test_saved_model_remembers_method_and_routers(tiny, tmp_path):
    routers = {layer: torch.randn(2 * 16) for layer in range(2)}
    ids = _ids(40, 7)
    with patch_attention(tiny, "dash", router=routers, alpha=2.0, **SPARSE["dash"]):
        expected = tiny(ids).logits
        tiny.save_pretrained(tmp_path)
    for m in tiny.modules():  # leave the shared fixture router-free
        m._buffers.pop("indexer_q", None)
    loaded, _ = _load_dir(tmp_path)
    assert current_attention(loaded)["method"] == "dash"
    assert current_attention(loaded)["params"]["alpha"] == 2.0
    assert set(model_routers(loaded)) == {0, 1}
    torch.testing.assert_close(loaded(ids).logits, expected)
    apply_attention(loaded, "dash", **SPARSE["dash"])  # routers stay attached: still the trained routing
    routed = loaded(ids).logits
    for m in loaded.modules():
        m._buffers.pop("indexer_q", None)
    assert not torch.allclose(loaded(ids).logits, routed)


@torch.no_grad()
def test_patch_block_restores_the_routers(tiny):
    """Routers attached (or dropped) by ``patch_attention(..., router=...)`` are undone on exit, as the method and
    layer scales are: a later ``dash`` without a router routes as before the block, not on the block's routers."""
    ids = _ids(40, 12)
    with patch_attention(tiny, "dash", **SPARSE["dash"]):
        mean_pooled = tiny(ids).logits
    with patch_attention(tiny, "dash", router={layer: torch.randn(2 * 16) for layer in range(2)}, **SPARSE["dash"]):
        assert set(model_routers(tiny)) == {0, 1}
    assert model_routers(tiny) == {}
    with patch_attention(tiny, "dash", **SPARSE["dash"]):
        torch.testing.assert_close(tiny(ids).logits, mean_pooled, rtol=0, atol=0)
    kept = {0: torch.randn(2 * 16)}
    with patch_attention(tiny, "dash", router=kept):
        with patch_attention(tiny, "dash", router="none"):
            assert model_routers(tiny) == {}
        assert set(model_routers(tiny)) == {0} and torch.equal(model_routers(tiny)[0], kept[0])
    assert model_routers(tiny) == {}


def _load_dir(path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.save_pretrained(path)
    return load_model(str(path))


@pytest.mark.parametrize("method,params,field", [
    ("sparse", {}, "unknown attention method"),
    ("dash", {"alpha": 1.0}, "alpha"),
    ("dash", {"alpha": 2.5}, "alpha"),
    ("dash", {"block_size": 0}, "block_size"),
    ("dash", {"block_size": 32.5}, "block_size"),
    ("dash", {"scale": -1.0}, "scale"),
    ("dash", {"topk": 3}, "topk"),
    ("infllmv2", {"kernel_size": 24, "kernel_stride": 16}, "kernel_size"),
    ("infllmv2", {"block_size": 40}, "block_size"),
    ("nsa", {"topk": -1}, "topk"),
    ("nsa", {"window": -5}, "window"),
])
def test_bad_parameters_name_the_field(tiny, method, params, field):
    with pytest.raises(ValueError, match=field):
        apply_attention(tiny, method, **params)


def test_bad_shapes_are_rejected_before_compute():
    from dash_eval.kernels import sparse_attention

    q, k = torch.randn(1, 6, 10, 16), torch.randn(1, 4, 10, 16)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        sparse_attention(q, k, k, "dash")
    with pytest.raises(ValueError, match="query length"):
        sparse_attention(torch.randn(1, 4, 12, 16), k, k, "full")


@torch.no_grad()
def test_beam_search_reorders_through_the_patch(tiny):
    """generate's beam search reorders the cache through the model's ``_reorder_cache``, which the patch provides
    (it drops the layers' decode caches, test_triton_topk_decode.py) and takes away again."""
    import dash_eval.dash_models.patch as patch_module

    reorders = []
    real = patch_module._reorder_cache

    def spy(model, past_key_values, beam_idx):
        reorders.append(beam_idx.clone())
        return real(model, past_key_values, beam_idx)

    before = set(tiny.__dict__)
    ids = _ids(21, 9)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patch_module, "_reorder_cache", spy)
        with patch_attention(tiny, "dash", **SPARSE["dash"]):
            beams = tiny.generate(ids, max_new_tokens=5, num_beams=2, do_sample=False, pad_token_id=0,
                                  eos_token_id=None)
    assert reorders and beams.shape == (1, 26)
    assert set(tiny.__dict__) - {"_dash_tally"} == before - {"_dash_tally"}  # only the tally stays, to be read
    with patch_attention(tiny, "nsa", **SPARSE["nsa"]):
        apply_attention(tiny, "dash", **SPARSE["dash"])
        from dash_eval.dash_models import remove_attention

        remove_attention(tiny)
        assert "_reorder_cache" not in tiny.__dict__


def _windowed(kind: str):
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=97, max_position_embeddings=128, pad_token_id=0)
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**common, head_dim=16, sliding_window=6)).eval()
    config = Qwen2Config(**common, use_sliding_window=True, sliding_window=6, max_window_layers=1)
    return Qwen2ForCausalLM(config).eval()


@torch.no_grad()
@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_sliding_window_models(kind):
    """A sliding-window layer: the sparse methods, which attend the whole causal context, refuse sequences longer
    than the window (their decode steps read the window's edge as left padding and shifted every block); ``full``
    gives the model's own logits, in prefill and decode, and refuses a padded batch past the window."""
    model = _windowed(kind)
    ids, short = _ids(15, 10), _ids(6, 11)
    own = model(ids).logits
    own_gen = model.generate(ids, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0, eos_token_id=None)
    with patch_attention(model, "full"):
        torch.testing.assert_close(model(ids).logits, own, rtol=0, atol=0)
        gen = model.generate(ids, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=0, eos_token_id=None)
        torch.testing.assert_close(torch.stack(gen.logits), torch.stack(own_gen.logits), rtol=1e-5, atol=1e-5)
        batch, mask = torch.zeros(2, 15, dtype=torch.long), torch.zeros(2, 15, dtype=torch.long)
        batch[0], mask[0], batch[1, 5:], mask[1, 5:] = ids[0], 1, ids[0, :10], 1
        with pytest.raises(ValueError, match=r"full: .*sliding_window=6.* 15 tokens.*left-padded batch"):
            model(batch, attention_mask=mask)
    for method in SPARSE:
        with patch_attention(model, method, **SPARSE[method]):
            model(short)  # within the window: nothing to refuse
            with pytest.raises(ValueError, match=rf"{method}: .*sliding_window=6.* 15 tokens"):
                model(ids)
            with pytest.raises(ValueError, match=rf"{method}: .*sliding_window=6.* 7 tokens"):
                model.generate(short, max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=None)


def test_unsupported_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="model architecture 'gpt2' is not supported"):
        apply_attention(model, "dash")


@torch.no_grad()
def test_tally_counts_a_prefill_continuing_a_cache_as_prefill(tiny):
    """Only one new query over a cache is a decode step: a 5-token continuation of a cached prompt is prefill
    (its queries and causal pairs go there), and a one-token prompt with no cache is prefill too."""
    from transformers import DynamicCache

    layers, hkv = 2, 2
    with patch_attention(tiny, "dash", **SPARSE["dash"]):
        tally = get_tally(tiny)
        tally.reset()
        ids = _ids(25, 9)
        cache = DynamicCache(config=tiny.config)
        tiny(ids[:, :20], past_key_values=cache)
        tiny(ids[:, 20:], past_key_values=cache)
        pre, dec = tally.summary("prefill"), tally.summary("decode")
        assert pre["queries"] == 25 * layers * hkv and dec["queries"] == 0
        assert pre["causal_pairs"] == sum(range(1, 26)) * layers * hkv
        tally.reset()
        tiny(ids[:, :1])
        assert tally.summary("prefill")["queries"] == layers * hkv and tally.summary("decode")["queries"] == 0
