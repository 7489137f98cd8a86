"""Per-layer routing scales (dash_models.layer_scales): multipliers of dash's scale in each layer, the
per-layer tally, the joint per-layer bisection, the sweep's calibrate_per_layer option, and a per-layer
calibration on the embedded model."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from dash_eval.dash_models import apply_attention, get_tally, patch_attention
from dash_eval.dash_models.layer_scales import layer_scales_json, load_layer_scales, model_layer_scales
from dash_eval.evals.sweep_calibrate import bisect_layer_sparsity
from dash_eval.evals.sweep_cells import expand_cells
from dash_eval.evals.sweep_config import ConfigError, parse_config

DASH = {"block_size": 4, "init_blocks": 1, "local_blocks": 1}


def _ids(n: int = 60) -> torch.Tensor:
    return torch.randint(3, 97, (1, n), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def _run(model, **kwargs):
    apply_attention(model, "dash", **DASH, **kwargs)
    tally = get_tally(model)
    tally.reset()
    logits = model(_ids()).logits
    return logits, tally.layer_sparsity("prefill"), tally.summary("prefill")["sparsity"]


def test_multipliers_scale_each_layers_routing(tiny):
    # random weights route everything below scale ~10: 4.0 and 4.0 * 100 differ in both layers
    global_logits, global_layers, _ = _run(tiny, scale=400.0, layer_scales="none")
    base_logits, base_layers, _ = _run(tiny, scale=4.0, layer_scales="none")
    both, both_layers, _ = _run(tiny, scale=4.0, layer_scales={0: 100.0, 1: 100.0})
    assert torch.equal(both, global_logits) and both_layers == global_layers  # 4.0 * 100.0 is exactly 400.0
    one, one_layers, _ = _run(tiny, scale=4.0, layer_scales={0: 100.0})  # layer 0 sees the same inputs
    assert one_layers[0] == global_layers[0] != base_layers[0]
    assert not torch.equal(one, base_logits) and not torch.equal(one, global_logits)
    # None keeps the multipliers set; "none" clears them
    kept, _, _ = _run(tiny, scale=4.0)
    assert torch.equal(kept, one) and model_layer_scales(tiny) == {0: 100.0}
    cleared, _, _ = _run(tiny, scale=4.0, layer_scales="none")
    assert torch.equal(cleared, base_logits) and model_layer_scales(tiny) == {}


def test_tally_layer_sparsity_averages_to_the_models(tiny):
    _, layers, overall = _run(tiny, scale=100.0, layer_scales={0: 1.0, 1: 4.0})
    assert sorted(layers) == [0, 1] and layers[0] != layers[1]
    assert math.isclose(sum(layers.values()) / 2, overall, rel_tol=1e-12)  # equal causal pairs per layer
    _run(tiny, scale=1.0, layer_scales="none")


def test_json_round_trip_and_patch_attention_restores(tiny, tmp_path):
    path = tmp_path / "scales.json"
    path.write_text(json.dumps({"layer_scales": layer_scales_json({1: 2.5, 0: 0.5})}))
    assert load_layer_scales(path) == {0: 0.5, 1: 2.5}
    apply_attention(tiny, "dash", **DASH, layer_scales=str(path))
    assert model_layer_scales(tiny) == {0: 0.5, 1: 2.5}
    with patch_attention(tiny, "dash", **DASH, layer_scales={0: 9.0}):
        assert model_layer_scales(tiny) == {0: 9.0}
    assert model_layer_scales(tiny) == {0: 0.5, 1: 2.5}
    apply_attention(tiny, "full", layer_scales="none")


@pytest.mark.parametrize("value, match", [
    ({5: 2.0}, r"layers \[5\] that the model lacks"),
    ({0: 0.0}, "layer 0 has multiplier 0.0; accepted: a finite number > 0"),
    ({0: float("nan")}, "accepted: a finite number > 0"),
    ({"x": 1.0}, "layer key 'x' is not an integer"),
    (3.0, "accepted: a JSON file"),
])
def test_bad_multipliers_name_the_problem(tiny, value, match):
    before = model_layer_scales(tiny)
    with pytest.raises(ValueError, match=match):
        apply_attention(tiny, "dash", **DASH, layer_scales=value)
    assert model_layer_scales(tiny) == before  # nothing changed


def test_bad_files_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_layer_scales(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        load_layer_scales(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text('{"value": 1.0}')
    with pytest.raises(ValueError, match="no 'layer_scales' object"):
        load_layer_scales(tmp_path / "empty.json")


# --- the joint bisection ------------------------------------------------------------------------------------


def _curves(slopes, coupling=0.0):
    """Sparsity of layer l rises with its value (and, with coupling, a little with the layer before)."""
    calls = []

    def measure(values):
        calls.append(dict(values))
        out = {}
        for layer, a in slopes.items():
            own = 1 - 1 / (1 + a * values[layer])
            prev = 1 - 1 / (1 + values.get(layer - 1, 1.0))
            out[layer] = (1 - coupling) * own + coupling * prev
        return out

    return measure, calls


def test_layer_bisection_reaches_the_target_in_every_layer():
    slopes = {0: 0.05, 1: 1.0, 2: 30.0}
    measure, calls = _curves(slopes)
    cal = bisect_layer_sparsity(measure, [0, 1, 2], 0.75, parameter="scale", low=0.01, high=100.0,
                                tolerance=0.005, max_steps=30)
    assert cal.reached and cal.layers_reached and len(calls) == len(cal.steps) <= 30
    for layer, a in slopes.items():
        exact = 3.0 / a  # 1 - 1 / (1 + a x) = 0.75
        assert math.isclose(cal.value * cal.layer_scales[layer], exact, rel_tol=0.05)
        assert abs(cal.layer_sparsity[layer] - 0.75) <= 0.005
    assert math.isclose(math.prod(cal.layer_scales.values()), 1.0, rel_tol=1e-9)  # multipliers of a geomean
    assert json.loads(json.dumps(cal.to_json()))["layer_scales"].keys() == {"0", "1", "2"}


def test_layer_bisection_with_coupled_layers_and_an_unreachable_one():
    measure, _ = _curves({0: 1.0, 1: 2.0}, coupling=0.2)
    cal = bisect_layer_sparsity(measure, [0, 1], 0.6, parameter="scale", low=0.01, high=100.0, max_steps=20)
    assert cal.layers_reached and all(abs(s - 0.6) <= 0.01 for s in cal.layer_sparsity.values())
    measure, _ = _curves({0: 1.0, 1: 1e-6})  # layer 1 cannot reach 0.6 below 100
    cal = bisect_layer_sparsity(measure, [0, 1], 0.6, parameter="scale", low=0.01, high=100.0, max_steps=12)
    assert not cal.layers_reached and abs(cal.layer_sparsity[0] - 0.6) < 0.05
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        bisect_layer_sparsity(measure, [0], 1.5, parameter="scale", low=0.01, high=100.0)


# --- the sweep option ---------------------------------------------------------------------------------------

RAW = {
    "name": "per-layer",
    "model": {"pretrained": "default"},
    "tasks": [{"task": "niah_single", "lengths": [512], "samples": 2, "seed": 0}],
    "methods": [
        {"method": "dash", "target_sparsity": 0.75, "block_size": 32},
        {"method": "dash", "label": "dash-per-layer", "target_sparsity": 0.75, "block_size": 32,
         "calibrate_per_layer": True},
    ],
    "output": "results/per-layer",
}


def _errors(methods) -> list[str]:
    raw = copy.deepcopy(RAW)
    raw["methods"] = methods
    with pytest.raises(ConfigError) as info:
        parse_config(raw, check_model=False)
    return info.value.errors


def test_config_option_and_cell_identity():
    config = parse_config(copy.deepcopy(RAW), check_model=False)
    plain, per_layer = expand_cells(config)
    assert not plain.per_layer and per_layer.per_layer
    assert "calibrate_per_layer" not in plain.spec(config) and per_layer.spec(config)["calibrate_per_layer"]
    assert "target_sparsity=0.75,per_layer" in per_layer.name(config)
    from dash_eval.evals.sweep_lm_eval import lm_eval_model_args

    args = lm_eval_model_args(config, per_layer, {"scale": 0.7})
    assert args["layer_scales"].endswith(f"calibration/{per_layer.calibration_key(config)}.json")
    assert "layer_scales" not in lm_eval_model_args(config, plain, {"scale": 0.7})
    # the option off is the same cell as no option
    raw = copy.deepcopy(RAW)
    raw["methods"][0]["calibrate_per_layer"] = False
    assert expand_cells(parse_config(raw, check_model=False))[0].hash(config) == plain.hash(config)


def test_config_errors_name_the_field():
    errors = _errors([{"method": "dash", "calibrate_per_layer": True}])
    assert any("methods[0].calibrate_per_layer" in e and "only meaningful with target_sparsity" in e for e in errors)
    errors = _errors([{"method": "dash", "target_sparsity": 0.5, "calibrate_per_layer": "yes"}])
    assert any("methods[0].calibrate_per_layer" in e and "accepted: true or false" in e for e in errors)
    errors = _errors([{"method": "infllmv2", "target_sparsity": 0.5, "calibrate_per_layer": True}])
    assert any("methods[0].calibrate_per_layer" in e and "calibrates 'topk'" in e for e in errors)


@pytest.mark.slow
def test_per_layer_calibration_on_the_embedded_model(tmp_path):
    """The sweep's runner calibrates every layer of the embedded model to the target on its own."""
    from dash_eval.evals.sweep_lm_eval import LmEvalRunner
    from dash_eval.evals.sweep_store import ResultsStore

    raw = copy.deepcopy(RAW)
    raw["output"] = str(tmp_path / "out")
    raw["methods"] = [{**RAW["methods"][1], "target_sparsity": 0.5}]  # 380-token prompts reach ~0.69 at most
    raw["calibration"] = {"samples": 1, "seed": 99, "tolerance": 0.03, "max_steps": 10}
    config = parse_config(raw, check_model=True)
    (cell,) = expand_cells(config)
    runner = LmEvalRunner(config, ResultsStore(config.output))
    record = runner.calibrate(cell)
    assert record["per_layer"] and len(record["layer_scales"]) == 30
    assert max(abs(s - 0.5) for s in record["layer_sparsity"].values()) <= 0.03
    assert record["reached"] and abs(record["sparsity"] - 0.5) <= 0.03
    # the values run as recorded: measured again, each layer's sparsity is what the record says
    scales = {int(k): record["value"] * m for k, m in record["layer_scales"].items()}
    again = runner.measure_layer_sparsity(cell, {**cell.params, "scale": 1.0}, scales,
                                          runner._calibration_prompts(cell))
    assert all(math.isclose(again[k], record["layer_sparsity"][str(k)], abs_tol=1e-9) for k in again)
    assert ResultsStore(config.output).read_calibration(cell.calibration_key(config)) == json.loads(json.dumps(record))


# --- fixed multipliers in a sweep entry (layer_scales: FILE or router directory) ----------------------------


def test_fixed_layer_scales_in_a_config(tmp_path):
    scales = tmp_path / "scales.json"
    scales.write_text(json.dumps({"layer_scales": {"0": 0.5, "1": 2.0}}))
    raw = copy.deepcopy(RAW)
    raw["methods"] = [{"method": "dash", "target_sparsity": 0.75},
                      {"method": "dash", "label": "fixed", "target_sparsity": 0.75, "layer_scales": str(scales)}]
    config = parse_config(raw, check_model=False)
    plain, fixed = expand_cells(config)
    assert fixed.layer_scales == str(scales) and plain.layer_scales is None
    assert "layer_scales" not in plain.spec(config) and fixed.spec(config)["layer_scales"] == str(scales)
    assert fixed.calibration_key(config) != plain.calibration_key(config)
    assert "layer_scales" in fixed.name(config) and "layer_scales" not in plain.name(config)
    from dash_eval.evals.sweep_lm_eval import lm_eval_model_args

    assert lm_eval_model_args(config, fixed, {"scale": 0.7})["layer_scales"] == str(scales)
    assert "layer_scales" not in lm_eval_model_args(config, plain, {"scale": 0.7})


def test_fixed_layer_scales_errors_name_the_field(tmp_path):
    errors = _errors([{"method": "dash", "target_sparsity": 0.5, "layer_scales": str(tmp_path / "nope.json")}])
    assert any("methods[0].layer_scales" in e and "no such file" in e for e in errors)
    (tmp_path / "router").mkdir()
    errors = _errors([{"method": "dash", "layer_scales": str(tmp_path / "router")}])
    assert any("methods[0].layer_scales" in e and "without router.json" in e for e in errors)
    (tmp_path / "router" / "router.json").write_text('{"layer_scales": null}')  # a router fitted before them
    errors = _errors([{"method": "dash", "layer_scales": str(tmp_path / "router")}])
    assert any("methods[0].layer_scales" in e and "no 'layer_scales' object" in e for e in errors)
    good = tmp_path / "s.json"
    good.write_text('{"layer_scales": {"0": 1.5}}')
    errors = _errors([{"method": "infllmv2", "layer_scales": str(good)}])
    assert any("methods[0].layer_scales" in e and "no routing 'scale'" in e for e in errors)
    errors = _errors([{"method": "dash", "target_sparsity": 0.5, "calibrate_per_layer": True,
                       "layer_scales": str(good)}])
    assert any("methods[0].layer_scales" in e and "give one or the other" in e for e in errors)
