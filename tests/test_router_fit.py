"""Router fitting on a tiny random Llama: the Fenchel-Young loss, gradients through the pooling, the fit,
the router file round trip, the CLI, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from dash_eval.dash_models import apply_attention, get_tally, load_router_file
from dash_eval.dash_models import router_fit as rf
from dash_eval.dash_models import router_output as ro
from dash_eval.dash_models.layer_scales import load_layer_scales
from dash_eval.kernels.dash.naive import dash_block_summaries, dash_route
from dash_eval.kernels.entmax import entmax
from transformers import LlamaConfig, LlamaForCausalLM

BLOCK = 8
SETTINGS = dict(tokens=96, sequences=2, queries=48, holdout_queries=24, batch=32, steps=40, lr=0.1,
                block_size=BLOCK, init_blocks=1, local_blocks=2, source="python-docs")


class ByteTokenizer:
    """Enough of a tokenizer for the calibration text: one id per byte, nothing added."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [b % 97 for b in text.encode()]}


def _tiny(head_dim: int = 16, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=96, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=6,
        num_key_value_heads=2, head_dim=head_dim, vocab_size=97, max_position_embeddings=512,
        initializer_range=0.1,  # peakier attention than the default 0.02, so blocks differ in mass
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def captured(tiny):
    settings = rf.FitSettings(**SETTINGS)
    ids, _ = rf.calibration_ids(ByteTokenizer(), settings)
    return rf.capture(tiny, ids, settings, progress=False), settings


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_fenchel_young_loss_is_zero_at_target_and_its_gradient_is_p_minus_y(alpha):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[:, 5:] = False
    y = torch.softmax(torch.randn(5, 7, generator=g, dtype=torch.float64).masked_fill(~mask, -torch.inf), -1)
    loss = rf.entmax_fy_loss(z, y, mask, alpha)
    assert (loss > 0).all()
    loss.sum().backward()
    p = entmax(torch.where(mask, z.detach(), 0), alpha, mask)
    torch.testing.assert_close(z.grad, p - y, rtol=1e-10, atol=1e-10)
    at_target = rf.entmax_fy_loss(z.detach(), p, mask, alpha)
    torch.testing.assert_close(at_target, torch.zeros(5, dtype=torch.float64), atol=1e-10, rtol=0)


def test_gradient_reaches_the_router_through_the_pooling(captured):
    # dash_block_summaries pools in float32, so the check is a central difference along random directions
    # with a step that float32 resolves
    cap, settings = captured
    batch = rf.make_batch(cap, torch.nonzero(~cap.holdout).flatten(), settings)
    n_layers, hkv, d = cap.keys.shape[1], cap.keys.shape[2], cap.keys.shape[-1]
    gen = torch.Generator().manual_seed(3)
    u0 = 0.5 * torch.randn(n_layers, hkv, d, generator=gen)
    scale = torch.ones(n_layers, hkv)

    def loss_of(u: torch.Tensor) -> torch.Tensor:
        return rf.fit_losses(cap, batch, rf.block_summaries(cap, u, BLOCK), scale, settings.alpha).sum()

    u = u0.clone().requires_grad_(True)
    loss_of(u).backward()
    assert u.grad.abs().max() > 1e-4
    eps = 1e-2
    with torch.no_grad():
        for _ in range(3):
            v = torch.randn(u0.shape, generator=gen)
            v /= v.norm()
            fd = (loss_of(u0 + eps * v).double() - loss_of(u0 - eps * v).double()) / (2 * eps)
            exact = (u.grad.double() * v).sum()
            assert abs(fd - exact) <= 2e-2 * abs(exact) + 2e-4, (float(fd), float(exact))


def test_fit_routing_is_the_dash_methods_routing(captured):
    cap, settings = captured
    sel = torch.nonzero(cap.holdout).flatten()
    batch = rf.make_batch(cap, sel, settings)
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(cap.keys.shape[1], cap.keys.shape[2], cap.keys.shape[-1], generator=gen)
    scale = torch.full(u.shape[:2], 0.7)
    ours = rf.routed_sets(cap, batch, rf.block_summaries(cap, u, BLOCK), scale, settings.alpha)
    for i in range(cap.keys.shape[1]):
        kbar = dash_block_summaries(cap.keys[:, i], u[i].reshape(-1), BLOCK, float(cap.softmax_scale[i]))
        _, _, pbar = dash_route(
            cap.queries[:, i][..., sel, :], kbar, cap.positions[sel], cap.seq_len // BLOCK, alpha=settings.alpha,
            scale=0.7, sigma=1e6, init_blocks=1, local_blocks=2, block_size=BLOCK,
            softmax_scale=float(cap.softmax_scale[i]),
        )
        assert torch.equal(ours[:, i], (pbar > 0) & batch.routable)


def test_capture_targets_are_full_attention_block_mass(tiny, captured):
    cap, settings = captured
    # the captured mass against the attention probabilities of the same weights run eagerly
    ids, _ = rf.calibration_ids(ByteTokenizer(), settings)
    eager = _tiny()
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        out = eager(ids[:1], output_attentions=True)
    probs = out.attentions[1][0]  # [Hq, N, N] of layer 1
    pos = cap.positions
    want = probs[:, pos, : (cap.seq_len // BLOCK) * BLOCK].reshape(6, len(pos), -1, BLOCK).sum(-1)
    torch.testing.assert_close(cap.mass[0, 1].reshape(6, len(pos), -1), want, rtol=1e-4, atol=1e-5)
    batch = rf.make_batch(cap, torch.arange(len(pos)), settings)
    sums = batch.target.sum(-1)[batch.weight > 0]
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert not batch.target[..., ~batch.routable].any()  # forced blocks carry no target
    assert tiny.config._attn_implementation != rf.CAPTURE_IMPLEMENTATION


def test_fit_lowers_the_loss_on_a_random_llama(captured):
    cap, settings = captured
    result = rf.fit_captured(cap, settings, progress=False)
    assert all(r["loss_after"] < 0.8 * r["loss_before"] for r in result.layers), result.layers
    assert result.loss_curve[-1] < result.loss_curve[0]
    assert set(result.routers) == {0, 1} and result.routers[0].shape == (2 * 16,)


def test_head_targets_fit_each_head_to_its_own_mass(captured):
    """target="head": each query head's loss is against its own renormalised block mass; when every head
    of a group has the same mass the two targets give the same loss, and the fit lowers it."""
    cap, _ = captured
    head = rf.FitSettings(**{**SETTINGS, "target": "head"})
    settings = rf.FitSettings(**{**SETTINGS, "target": "group"})
    assert rf.FitSettings().target == "head"  # the default since session 8
    sel = torch.arange(cap.positions.numel())
    batch = rf.make_batch(cap, sel, head)
    assert batch.head_target.shape == cap.mass[..., sel, :].shape
    valid = batch.head_weight > 0
    torch.testing.assert_close(batch.head_target.sum(-1)[valid], torch.ones(int(valid.sum())))
    assert not batch.head_target[..., ~batch.routable].any()
    kbar = rf.block_summaries(cap, None, BLOCK)
    scale = torch.ones(2, 2)
    per_head = rf.fit_losses(cap, batch, kbar, scale, 1.5)
    group = rf.fit_losses(cap, rf.make_batch(cap, sel, settings), kbar, scale, 1.5)
    assert not torch.allclose(per_head, group)  # the heads of a random model attend differently
    same = rf.Capture(cap.layers, cap.keys, cap.queries, cap.mass.mean(3, keepdim=True).expand_as(cap.mass),
                      cap.softmax_scale, cap.positions, cap.holdout, cap.seq_len)
    torch.testing.assert_close(rf.fit_losses(same, rf.make_batch(same, sel, head), kbar, scale, 1.5),
                               rf.fit_losses(same, rf.make_batch(same, sel, settings), kbar, scale, 1.5))
    result = rf.fit_captured(cap, head, progress=False)
    assert all(r["loss_after"] < 0.8 * r["loss_before"] for r in result.layers), result.layers


def test_profile_layer_scales_give_the_fitted_router_mean_poolings_budget_per_layer(captured):
    cap, settings = captured
    settings = rf.FitSettings(**{**SETTINGS, "budget": 0.5})  # every query routes >= 1 of its few blocks
    g = torch.Generator().manual_seed(3)
    n_layers, hkv, d = cap.keys.shape[1], cap.keys.shape[2], cap.keys.shape[-1]
    # a router that makes pooling much sharper in layer 0 than in layer 1: one scale would move budget
    u = torch.randn(n_layers, hkv, d, generator=g) * torch.tensor([40.0, 1.0])[:, None, None]
    batch = rf.make_batch(cap, torch.nonzero(cap.holdout).flatten(), settings)
    kbar_mean = rf.block_summaries(cap, None, settings.block_size)
    kbar_fit = rf.block_summaries(cap, u, settings.block_size)
    m, recall_mean, recall_fit = rf.profile_layer_scales(cap, batch, kbar_mean, kbar_fit, settings)
    s0 = rf.global_scale_at_fraction(cap, batch, kbar_mean, settings)

    def fractions(kbar, scale):
        routed = rf.routed_sets(cap, batch, kbar, scale[:, None].expand(n_layers, hkv), settings.alpha)
        return rf.recall_and_fraction(batch, routed)

    rec_mean, frac_mean = fractions(kbar_mean, torch.full((n_layers,), s0))
    assert abs(frac_mean.mean() - settings.budget) < 0.03
    rec_fit, frac_fit = fractions(kbar_fit, s0 * m)
    assert torch.allclose(frac_fit, frac_mean, atol=0.03), (frac_fit, frac_mean)
    assert torch.allclose(rec_mean, recall_mean) and torch.allclose(rec_fit, recall_fit)
    _, frac_one_scale = fractions(kbar_fit, torch.full((n_layers,), s0))
    assert (frac_one_scale - frac_mean).abs().max() > 0.05  # without the multipliers the budget moves
    assert (m > 0).all() and torch.isfinite(m).all()


def _planted_capture(settings: rf.FitSettings, seed: int = 0) -> rf.Capture:
    """One layer whose blocks each hold one 'hot' key: queries look along dim 0, where the hot key's pull
    differs from block to block and the other keys are loud zero-mean noise. Full attention's block mass
    follows the block's strongest pulls; mean pooling ranks blocks by a noisy average of them."""
    g = torch.Generator().manual_seed(seed)
    n, d, c = settings.tokens, 16, settings.block_size
    nc = n // c
    k = torch.randn(1, n, d, generator=g)
    k[0, :, 0] = 2.0 * torch.randn(n, generator=g)
    hot = torch.arange(nc) * c + torch.randint(0, c, (nc,), generator=g)
    k[0, hot, 0] = 4.0 * torch.rand(nc, generator=g)
    positions, holdout = rf.sample_positions(settings, n)
    q = 0.3 * torch.randn(2, len(positions), d, generator=g)
    q[..., 0] = 6.0
    sm = d ** -0.5
    mass = rf.block_mass(q, k, positions, c, sm)
    return rf.Capture([0], k[None, None, :, : nc * c], q[None, None, None], mass[None, None, None],
                      torch.tensor([sm]), positions, holdout, n)


def test_fit_raises_recall_where_blocks_have_a_representative_token():
    settings = rf.FitSettings(tokens=256, block_size=8, queries=160, holdout_queries=64, batch=64, steps=60,
                              init_blocks=1, local_blocks=2)
    cap = _planted_capture(settings)
    result = rf.fit_captured(cap, settings, progress=False)
    (row,) = result.layers
    assert row["loss_after"] < 0.5 * row["loss_before"], row
    assert row["recall_at_budget_after"] > row["recall_at_budget_before"] + 0.1, row
    assert result.routers[0][0] > 0.5  # pooling leans towards the keys that pull the queries


def test_saved_router_round_trips_and_routes_like_the_fitted_one(tmp_path):
    model = _tiny(seed=1)
    settings = rf.FitSettings(**{**SETTINGS, "steps": 15})
    result = rf.fit_router(model, ByteTokenizer(), settings, tmp_path / "router", progress=False)
    loaded = load_router_file(tmp_path / "router")
    assert set(loaded) == set(result.routers)
    for layer, tensor in result.routers.items():
        assert loaded[layer].dtype == torch.float32 and torch.equal(loaded[layer], tensor)
    record = json.loads((tmp_path / "router" / ro.ROUTER_JSON).read_text())
    assert record["settings"]["steps"] == 15 and record["calibration"]["source"] == "python-docs"
    assert len(record["layers"]) == 2 and len(record["loss_curve"]) == 15
    assert (tmp_path / "router" / ro.LOSS_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the budget-profile multipliers travel in router.json and load from the directory
    assert record["layer_scales"] == {str(k): v for k, v in result.layer_scales.items()}
    assert load_layer_scales(tmp_path / "router") == result.layer_scales and len(result.layer_scales) == 2

    ids = torch.randint(3, 97, (1, 70), generator=torch.Generator().manual_seed(5))
    params = dict(block_size=BLOCK, scale=2.0, init_blocks=1, local_blocks=2)

    def run(router):
        for m in model.modules():
            m._buffers.pop("indexer_q", None)
        apply_attention(model, "dash", router=router, **params)
        tally = get_tally(model)
        tally.reset()
        with torch.no_grad():
            logits = model(ids).logits
        return logits, tally.summary("prefill")

    from_file, stats_file = run(str(tmp_path / "router"))
    in_memory, stats_memory = run(result.routers)
    mean_pooled, _ = run(None)
    assert torch.equal(from_file, in_memory) and stats_file == stats_memory
    assert not torch.equal(from_file, mean_pooled)


def test_short_calibration_is_rejected_before_compute(tiny):
    with pytest.raises(ValueError, match=r"tokens=100 .*block_size=64.*tokens >= 129"):
        rf.FitSettings(tokens=100, block_size=64)
    settings = rf.FitSettings(**SETTINGS)
    with pytest.raises(ValueError, match=r"calibration sequences have 20 tokens.*>= 25"):
        rf.capture(tiny, torch.randint(3, 97, (1, 20)), settings, progress=False)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match=r"alpha=2.5; accepted: a number in \(1, 2\]"):
        rf.FitSettings(alpha=2.5)
    with pytest.raises(ValueError, match=r"source='no/such/file.txt' .*python-docs"):
        rf.FitSettings(source="no/such/file.txt")
    with pytest.raises(ValueError, match=r"sequences=0; accepted: an integer >= 1"):
        rf.FitSettings(sequences=0)
    with pytest.raises(ValueError, match=r"target='heads'; accepted: group, head"):
        rf.FitSettings(target="heads")


def test_model_without_the_attention_layout_is_rejected():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=97, n_positions=64))
    with pytest.raises(ValueError, match=r"'gpt2' is not supported.*llama"):
        rf.fit_router(gpt2, ByteTokenizer(), rf.FitSettings(**SETTINGS), progress=False)


def test_router_file_that_does_not_fit_the_model_is_rejected(tmp_path):
    small = _tiny(head_dim=8)
    settings = rf.FitSettings(**{**SETTINGS, "steps": 2})
    rf.fit_router(small, ByteTokenizer(), settings, tmp_path / "hd8", progress=False)
    model = _tiny(head_dim=16)
    with pytest.raises(ValueError, match=r"router='.*hd8' layer 0: indexer_q has shape \(16,\).*\[Hkv \* D\] = \[32\]"):
        apply_attention(model, "dash", router=str(tmp_path / "hd8"), block_size=BLOCK)
    deep = _tiny(layers=3)
    rf.fit_router(deep, ByteTokenizer(), settings, tmp_path / "deep", progress=False)
    with pytest.raises(ValueError, match=r"router='.*deep' has layers \[2\] that the model lacks"):
        apply_attention(model, "dash", router=str(tmp_path / "deep"), block_size=BLOCK)


def _saved_tiny(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for w in rf.calibration_text("python-docs")[0].split()[:4000]})[:90]
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<unk>").save_pretrained(path)
    _tiny().save_pretrained(path)
    return path


def test_cli_writes_a_router_and_rejects_bad_arguments(tmp_path, capsys):
    from dash_eval.cli import main

    model_dir = _saved_tiny(tmp_path / "tiny")
    out = tmp_path / "router"
    args = ["fit-router", "--model", str(model_dir), "--output", str(out), "--tokens", "96", "--sequences", "2",
            "--block-size", "8", "--steps", "5", "--queries", "32", "--holdout-queries", "16", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "recall rose in" in printed and "router.safetensors" in printed
    assert set(load_router_file(out)) == {0, 1}
    assert main(args) == 2 and "already holds a router" in capsys.readouterr().err
    assert main([*args[:5], "--tokens", "10", "--block-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "tokens=10" in err and err.startswith("dash-eval fit-router: tokens=10")  # the prefix said once
    assert main(["fit-router", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o2")]) == 2


def test_router_none_drops_routers_and_set_routers_restores_them():
    from dash_eval.dash_models.router import model_routers, set_routers

    model = _tiny(seed=2)
    ids = torch.randint(3, 97, (1, 70), generator=torch.Generator().manual_seed(6))
    params = dict(block_size=BLOCK, scale=2.0, init_blocks=1, local_blocks=2)
    d = model.config.head_dim
    routers = {0: torch.randn(2 * d), 1: torch.randn(2 * d)}

    def logits(**kw):
        apply_attention(model, "dash", **kw, **params)
        with torch.no_grad():
            return model(ids).logits

    mean_pooled = logits()
    fitted = logits(router=routers)
    assert not torch.equal(fitted, mean_pooled)
    assert torch.equal(logits(), fitted)  # router=None keeps what the model has
    assert torch.equal(logits(router="none"), mean_pooled) and model_routers(model) == {}
    set_routers(model, {1: routers[1]})
    assert set(model_routers(model)) == {1}
    set_routers(model, routers)
    assert torch.equal(logits(), fitted)


def test_recall_calibration_repeats_first_half_passages_in_the_second_half():
    plain = rf.FitSettings(**{**SETTINGS, "tokens": 1024, "source": "python-docs"})
    recall = rf.FitSettings(**{**SETTINGS, "tokens": 1024, "source": "python-docs-recall"})
    ids_plain, _ = rf.calibration_ids(ByteTokenizer(), plain)
    ids_recall, desc = rf.calibration_ids(ByteTokenizer(), recall)
    assert "recall" in desc and desc["text_sha256"]
    half = 512
    assert torch.equal(ids_plain[:, :half], ids_recall[:, :half])  # the first half is the text as it is
    for row, orig in zip(ids_recall.tolist(), ids_plain.tolist()):
        changed = [i for i in range(half, 1024) if row[i] != orig[i]]
        assert 0.1 * half <= len(changed) <= 0.4 * half, len(changed)
        # every overwritten run of the second half is a passage of the first half
        start = changed[0]
        end = start
        while end + 1 < 1024 and row[end + 1] != orig[end + 1]:
            end += 1
        run = row[start : end + 1]
        assert any(row[s : s + len(run)] == run for s in range(0, half - len(run) + 1))


def test_router_fitted_elsewhere_warns_once(tmp_path, tiny, caplog):
    """Routers about to drive dash warn where they differ from how they were made: another block size than
    the fit-router record's, or only some layers covered; each warning once."""
    import logging

    from dash_eval.dash_models.router import ROUTER_FILENAME, warn_router_mismatch
    from safetensors.torch import save_file

    out = tmp_path / "r"
    out.mkdir()
    save_file({"layers.0.self_attn.indexer_q": torch.randn(32)}, str(out / ROUTER_FILENAME))
    (out / "router.json").write_text(json.dumps({"settings": {"block_size": 8}}))
    with caplog.at_level(logging.WARNING, logger="dash_eval.dash_models.router"):
        apply_attention(tiny, "dash", router=str(out), block_size=16)
        apply_attention(tiny, "dash", router=str(out), block_size=16)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert "fitted at block_size=8" in said[0] and "blocks of 16" in said[0]
    assert "covers 1 of 2 layers" in said[1] and "[1]" in said[1]
    assert warn_router_mismatch(str(out), {0: None, 1: None}, 2, 8) == []  # its own block size, every layer
    apply_attention(tiny, "dash", router="none")


def test_a_router_file_that_is_not_safetensors_is_named(tmp_path):
    bad = tmp_path / "router.safetensors"
    bad.write_text("not a safetensors file")
    with pytest.raises(ValueError, match=r"cannot read router.safetensors as safetensors .*accepted: a directory"):
        load_router_file(bad)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == rf.__name__ and r.levelname == "WARNING"]


def test_queries_beyond_the_text_are_reduced_with_a_warning(caplog):
    settings = rf.FitSettings(**{**SETTINGS, "queries": 500, "holdout_queries": 200})
    with caplog.at_level("WARNING", logger=rf.__name__):
        positions, holdout = rf.sample_positions(settings, 96)
    said = _warnings(caplog)
    assert len(said) == 1 and "queries + holdout_queries = 700" in said[0], said
    assert f"using {int((~holdout).sum())} fitted and {int(holdout.sum())} held-out" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger=rf.__name__):
        rf.sample_positions(rf.FitSettings(**SETTINGS), 96)  # 72 fit in the 80 routable positions
    assert _warnings(caplog) == []


def test_zero_steps_and_an_oversized_batch_are_said(captured, caplog):
    cap, _ = captured
    settings = rf.FitSettings(**{**SETTINGS, "steps": 0, "batch": 10_000})
    with caplog.at_level("WARNING", logger=rf.__name__):
        result = rf.fit_captured(cap, settings, progress=False)
    said = _warnings(caplog)
    assert any("steps=0" in s and "mean pooling" in s for s in said), said
    assert any("batch=10000" in s for s in said), said
    assert all((u == 0).all() for u in result.routers.values())
    caplog.clear()
    with caplog.at_level("WARNING", logger=rf.__name__):
        rf.fit_captured(cap, rf.FitSettings(**{**SETTINGS, "steps": 1}), progress=False)
    assert not any("steps=0" in s or "batch=" in s for s in _warnings(caplog))


def test_a_budget_no_scale_reaches_is_said(captured, caplog):
    cap, _ = captured
    # every held-out query routes at least one of its few routable blocks, so a tiny budget is out of reach
    settings = rf.FitSettings(**{**SETTINGS, "budget": 0.01})
    batch = rf.make_batch(cap, torch.nonzero(cap.holdout).flatten(), settings)
    kbar = rf.block_summaries(cap, None, settings.block_size)
    with caplog.at_level("WARNING", logger=rf.__name__):
        rf.profile_layer_scales(cap, batch, kbar, kbar, settings)
    said = _warnings(caplog)
    assert len(said) == 1 and "budget=0.01" in said[0] and "routes more" in said[0], said
    caplog.clear()
    with caplog.at_level("WARNING", logger=rf.__name__):
        rf.profile_layer_scales(cap, batch, kbar, kbar, rf.FitSettings(**{**SETTINGS, "budget": 0.5}))
    assert _warnings(caplog) == []


def test_held_out_evaluation_ticks_once_per_routing_pass(captured):
    cap, settings = captured
    ticks = []
    rf.evaluate(cap, None, None, settings, tick=lambda: ticks.append(1))
    n_layers, hkv, d = cap.keys.shape[1], cap.keys.shape[2], cap.keys.shape[-1]
    rf.layer_profile(cap, torch.zeros(n_layers, hkv, d), settings, tick=lambda: ticks.append(2))
    assert ticks.count(1) * 2 + ticks.count(2) == rf.EVAL_PASSES


def test_cli_usage_hint_carries_the_fitted_block_geometry(tmp_path):
    """The line fit-router ends with routes as the router was fitted: at the fit's block size, forced blocks and
    alpha where they differ from dash's defaults (the README's block-32 fit otherwise warns when loaded)."""
    from pathlib import Path

    from dash_eval.dash_models.router_fit_cli import usage_hint

    out = Path("results/routers/r")
    b32 = rf.FitSettings(block_size=32, init_blocks=2, local_blocks=4)
    assert usage_hint("default", out, b32) == (
        "use it with: load_model('default', method='dash', block_size=32, init_blocks=2, local_blocks=4, "
        "router='results/routers/r') or model_args method=dash,block_size=32,init_blocks=2,local_blocks=4,"
        "router=results/routers/r"
    )
    assert usage_hint("default", out, rf.FitSettings()) == (  # the defaults: nothing to add
        "use it with: load_model('default', method='dash', router='results/routers/r') "
        "or model_args method=dash,router=results/routers/r"
    )
    assert "alpha=1.25" in usage_hint("default", out, rf.FitSettings(alpha=1.25))
