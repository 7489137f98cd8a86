"""Sweep config validation: the whole file is checked before any cell runs, every error names its field
path, the bad value and what is accepted."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from dash_eval.evals.sweep_config import ConfigError, load_config, parse_config

GOOD = {
    "name": "smollm2-niah",
    "model": {"pretrained": "default", "dtype": "float32", "device": "cpu"},
    "tasks": [{"task": "niah_single", "lengths": [1024, 2048], "samples": 2, "seed": 0}],
    "methods": [
        {"method": "full"},
        {"method": "dash", "grid": {"alpha": [1.25, 1.5, 2.0], "block_size": [32, 64], "scale": [1.0, 4.0]}},
        {"method": "infllmv2", "grid": {"block_size": [64], "topk": [2, 4, 8], "local_blocks": [2]}},
        {"method": "nsa", "grid": {"topk": [2, 4, 8]}},
    ],
    "output": "results/smollm2-niah",
}


def _errors(raw, check_model=False) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, check_model=check_model)
    return info.value.errors


def _with(**changes):
    raw = copy.deepcopy(GOOD)
    raw.update(changes)
    return raw


def test_good_config_parses():
    config = parse_config(copy.deepcopy(GOOD), check_model=True)
    assert config.name == "smollm2-niah"
    assert [m.method for m in config.methods] == ["full", "dash", "infllmv2", "nsa"]
    assert config.methods[1].grid["alpha"] == (1.25, 1.5, 2.0)
    assert config.tasks[0].lengths == (1024, 2048)
    assert config.output == "results/smollm2-niah"


def test_issue_example_jsonl_entry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ruler.jsonl").write_text('{"input": "x", "outputs": ["y"]}\n')
    raw = _with(tasks=[*GOOD["tasks"], {"jsonl": "data/ruler.jsonl"}])
    config = parse_config(raw, check_model=False)
    assert config.tasks[1].label == "ruler" and config.tasks[1].lengths == (None,)
    assert config.tasks[1].jsonl == str(tmp_path / "data" / "ruler.jsonl")


def test_grid_value_error_names_the_index():
    raw = copy.deepcopy(GOOD)
    raw["methods"][1]["grid"]["alpha"] = [1.5, 2.0, 2.5]
    errors = _errors(raw)
    assert len(errors) == 1
    assert errors[0].startswith("methods[1].grid.alpha[2]:")
    assert "2.5" in errors[0] and "(1, 2]" in errors[0]


def test_every_error_is_reported_at_once():
    raw = copy.deepcopy(GOOD)
    raw["colour"] = "blue"
    raw["model"]["dtype"] = "float64"
    raw["model"]["device"] = "gpu"
    raw["model"]["batch"] = 4
    raw["tasks"][0]["lengths"] = [1024, "2k"]
    raw["tasks"][0]["samples"] = 0
    raw["methods"][0] = {"method": "ful"}
    raw["methods"][2]["grid"]["topk"] = [2, -1]
    raw["methods"][3]["windw"] = 64
    errors = _errors(raw)
    text = "\n".join(errors)
    for expected in [
        "(top level).colour: unknown key 'colour'",
        "model.dtype: bad value 'float64'; accepted: float32, bfloat16, float16, auto",
        "model.device: bad value 'gpu'",
        "model.batch: unknown key 'batch'",
        "tasks[0].lengths[1]: expected an integer, got str '2k'",
        "tasks[0].samples: bad value 0; accepted: an integer >= 1",
        "methods[0].method: unknown method 'ful'; accepted:",
        "methods[2].grid.topk[1]:",
        "methods[3].windw: unknown key 'windw'",
    ]:
        assert expected in text, f"missing {expected!r} in:\n{text}"
    assert "window" in next(e for e in errors if e.startswith("methods[3].windw"))  # lists nsa's parameters
    assert len(errors) == 9


def test_wrong_types_and_missing_keys():
    errors = _errors({"name": "x y", "model": "default", "tasks": {}, "methods": []})
    text = "\n".join(errors)
    assert "name: bad value 'x y'" in text
    assert "model: expected a mapping, got str 'default'" in text
    assert "tasks: expected a non-empty list" in text
    assert "methods: expected a non-empty list" in text
    assert _errors(["not", "a", "mapping"])[0].startswith("(top level): expected a mapping")
    errors = _errors({"model": {"dtype": "float32"}})
    assert {e.split(":")[0] for e in errors} >= {"name", "tasks", "methods", "model.pretrained"}


def test_task_errors():
    errors = _errors(
        _with(
            tasks=[
                {"task": "niah_nope", "lengths": [1024]},
                {"task": "niah_single"},
                {"task": "niah_single", "jsonl": "a.jsonl", "lengths": [1]},
                {"jsonl": "does/not/exist.jsonl"},
                {"task": "niah_single", "lengths": [512, 512], "seed": -1},
            ]
        )
    )
    text = "\n".join(errors)
    assert "tasks[0].task: unknown task 'niah_nope'; accepted:" in text and "niah_single" in text
    assert "tasks[1].lengths: missing" in text
    assert "tasks[2]: give exactly one of 'task'" in text
    assert "tasks[3].jsonl: file 'does/not/exist.jsonl' does not exist" in text
    assert "tasks[4].lengths[1]: length 512 listed twice" in text
    assert "tasks[4].seed: bad value -1" in text


def test_length_above_model_context():
    raw = _with(tasks=[{"task": "niah_single", "lengths": [1024, 100_000]}])
    errors = _errors(raw, check_model=True)
    assert len(errors) == 1
    assert errors[0].startswith("tasks[0].lengths[1]: length 100000 exceeds the model's context")
    assert "max_position_embeddings=8192" in errors[0]


def test_method_parameter_errors():
    errors = _errors(
        _with(
            methods=[
                {"method": "dash", "grid": {"alpha": 1.5}},
                {"method": "dash", "scale": [1, 2]},
                {"method": "dash", "scale": 2.0, "grid": {"scale": [1.0]}},
                {"method": "infllmv2", "grid": {"block_size": [64, 40]}},
                {"method": "dash", "grid": {"sclae": [1.0]}},
                {"method": "dash", "sigma": 0},
                {"method": "full", "grid": {"block_size": [64, 64]}},
            ]
        )
    )
    text = "\n".join(errors)
    assert "methods[0].grid.alpha: expected a non-empty list, got float 1.5" in text
    assert "methods[1].scale: expected a single value, got [1, 2]; put lists under 'grid'" in text
    assert "methods[2].grid.scale: 'scale' is both fixed" in text
    assert "methods[3].grid.block_size[1]:" in text and "kernel_stride" in text
    assert "methods[4].grid.sclae: unknown parameter 'sclae' of dash; accepted:" in text
    assert "methods[5].sigma: " in text and "sigma" in text
    assert "methods[6].grid.block_size[1]: value 64 listed twice" in text


def test_target_sparsity_errors():
    errors = _errors(
        _with(
            methods=[
                {"method": "dash", "target_sparsity": 1.5},
                {"method": "dash", "target_sparsity": [0.5], "scale": 2.0},
                {"method": "full", "target_sparsity": 0.5},
                {"method": "nsa", "calibrate": "topk"},
                {"method": "dash", "target_sparsity": 0.5, "calibrate_range": [4, 1]},
            ]
        )
    )
    text = "\n".join(errors)
    assert "methods[0].target_sparsity: bad value 1.5; accepted: a number strictly between 0 and 1" in text
    assert "methods[1].scale: 'scale' is calibrated by target_sparsity" in text
    assert "methods[2].target_sparsity: method full has no 'scale' or 'topk' parameter" in text
    assert "methods[3].calibrate: only meaningful with target_sparsity" in text
    assert "methods[4].calibrate_range: bad value [4, 1]" in text
    # top-k methods calibrate topk by default, dash calibrates scale
    config = parse_config(
        _with(
            methods=[
                {"method": "nsa", "target_sparsity": 0.75},
                {"method": "dash", "target_sparsity": [0.5, 0.9]},
            ]
        ),
        check_model=False,
    )
    assert [m.calibrate for m in config.methods] == ["topk", "scale"]


def test_calibration_seed_must_differ_from_task_seed():
    raw = _with(methods=[{"method": "dash", "target_sparsity": 0.75}], calibration={"seed": 0})
    errors = _errors(raw)
    assert errors == [next(e for e in errors if e.startswith("tasks[0].seed: seed 0 equals calibration.seed"))]
    errors = _errors(_with(calibration={"samples": 0, "tolerance": 2, "sead": 1}))
    text = "\n".join(errors)
    assert "calibration.samples: bad value 0" in text
    assert "calibration.tolerance: bad value 2" in text
    assert "calibration.sead: unknown key" in text


def test_load_config_reads_yaml_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, check_model=False)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    assert load_config(good, check_model=False).name == "smollm2-niah"


def test_task_data_is_checked_before_any_cell(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"input": "x", "outputs": ["y"]}\n{"input": 3}\n')
    short = tmp_path / "short.jsonl"
    short.write_text('{"input": "x", "outputs": ["y"]}\n')
    errors = _errors(
        _with(
            tasks=[
                {"task": "niah_single", "lengths": [64, 1024]},
                {"task": "niah_multikey", "lengths": [1024], "haystack": "nope"},
                {"jsonl": str(broken)},
                {"jsonl": str(short), "samples": 5},
            ]
        ),
        check_model=True,
    )
    by_field = {e.split(": ")[0]: e for e in errors}
    assert set(by_field) == {"tasks[0].lengths[0]", "tasks[1].haystack", "tasks[2].jsonl", "tasks[3].samples"}
    assert "length 64" in by_field["tasks[0].lengths[0]"] and "max_new_tokens" in by_field["tasks[0].lengths[0]"]
    assert (
        "haystack 'nope'" in by_field["tasks[1].haystack"]
        and "dash_niah_multikey_needle" in by_field["tasks[1].haystack"]
    )
    assert "line 2" in by_field["tasks[2].jsonl"] and "outputs" in by_field["tasks[2].jsonl"]
    assert (
        by_field["tasks[3].samples"]
        == f"tasks[3].samples: 5 asked for but {short} holds 1 samples; accepted: at most 1"
    )


def test_task_variants_options_and_labels():
    raw = _with(
        tasks=[
            {"task": "niah_single", "lengths": [1024]},
            {"task": "niah_single", "name": "single_3", "lengths": [1024], "options": {"value_type": "uuids"}},
            {"task": "dash_niah_multikey_needle", "lengths": [1024]},
            {"task": "niah_single", "haystack": "essay", "lengths": [1024]},
            {"task": "vt", "lengths": [1024]},
            {"task": "niah_multikey_uuid", "lengths": [1024]},
        ]
    )
    config = parse_config(raw, check_model=True)
    assert [t.label for t in config.tasks] == [
        "niah_single",
        "single_3",
        "niah_multikey_needle",
        "niah_single_essay",
        "vt",
        "niah_multikey_uuid",
    ]
    assert [t.lm_eval_task for t in config.tasks] == [
        "dash_niah_single",
        "dash_niah_single_uuid",
        "dash_niah_multikey_needle",
        "dash_niah_single_essay",
        "dash_vt",
        "dash_niah_multikey_uuid",
    ]
    # the variant's haystack and options are what the sweep's own checks and calibration use
    assert (config.tasks[0].haystack, config.tasks[1].haystack) == ("noise", "essay")
    assert config.tasks[1].options == {"value_type": "uuids"}
    errors = _errors(
        _with(
            tasks=[
                {"task": "niah_single", "lengths": [1024], "options": {"value_typ": "uuids"}},
                {"task": "niah_single", "name": "b", "lengths": [1024], "options": {"value_type": "emoji"}},
                {"task": "niah_multikey", "lengths": [1024], "options": ["value_type"]},
                {"task": "dash_niah_single", "lengths": [1024], "haystack": "essay"},
                {"task": "niah_singel", "lengths": [1024]},
            ]
        ),
        check_model=True,
    )
    by_field = {e.split(": ")[0]: e for e in errors}
    assert set(by_field) == {
        "tasks[0].options",
        "tasks[1].options",
        "tasks[2].options",
        "tasks[3].haystack",
        "tasks[4].task",
    }
    assert "value_typ" in by_field["tasks[0].options"] and "value_type=uuids" in by_field["tasks[0].options"]
    assert "emoji" in by_field["tasks[1].options"]
    assert "expected a mapping" in by_field["tasks[2].options"]
    assert "fixes its haystack" in by_field["tasks[3].haystack"]
    assert (
        "unknown task 'niah_singel'" in by_field["tasks[4].task"]
        and "dash_niah_single_uuid" in by_field["tasks[4].task"]
    )


def test_jsonl_entry_metric(tmp_path):
    data = tmp_path / "set.jsonl"
    data.write_text('{"input": "x", "outputs": ["y"], "length": 100}\n')
    config = parse_config(_with(tasks=[{"jsonl": str(data), "metric": "string_match_part"}]), check_model=True)
    assert config.tasks[0].metric == "string_match_part" and config.tasks[0].lm_eval_task == "dash_jsonl"
    errors = _errors(_with(tasks=[{"jsonl": str(data), "metric": "exact"}]))
    assert errors[0].startswith("tasks[0].metric: bad value 'exact'; accepted: string_match_all")


def test_method_label_and_router(tmp_path, monkeypatch):
    from dash_eval.evals.sweep_cells import expand_cells

    monkeypatch.chdir(tmp_path)
    (tmp_path / "fitted").mkdir()
    raw = _with(methods=[
        {"method": "dash", "scale": 2.0, "router": "none"},
        {"method": "dash", "label": "dash-fitted", "scale": 2.0, "router": "fitted"},
        {"method": "nsa", "topk": 2},
    ])
    config = parse_config(raw, check_model=False)
    expected = [("dash", "none"), ("dash-fitted", "fitted"), ("nsa", None)]
    assert [(m.series, m.router) for m in config.methods] == expected
    cells = expand_cells(config)
    assert [c.series for c in cells] == ["dash"] * 2 + ["dash-fitted"] * 2 + ["nsa"] * 2
    assert cells[2].effective_router(config) == "fitted" and cells[4].effective_router(config) is None
    assert cells[0].hash(config) != cells[2].hash(config)  # same parameters, another router: another cell
    assert "dash-fitted" in cells[2].name(config)
    # an entry without a router keeps the identity it had before routers could be set per entry
    assert "router" not in cells[4].spec(config)


def test_method_label_and_router_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    errors = _errors(_with(methods=[
        {"method": "nsa", "router": "none"},
        {"method": "dash", "router": "missing-dir"},
        {"method": "dash", "label": "bad label"},
        {"method": "nsa"},
        {"method": "infllmv2", "label": "nsa"},
    ]))
    assert any(e.startswith("methods[0].router:") and "no router" in e and "dash" in e for e in errors), errors
    assert any(e.startswith("methods[1].router:") and "'missing-dir' does not exist" in e and "'none'" in e
               for e in errors), errors
    assert any(e.startswith("methods[2].label:") for e in errors), errors
    assert any(e.startswith("methods[4].label:") and "already the series of methods[3] (method nsa)" in e
               for e in errors), errors


def test_entries_that_repeat_a_cell_are_rejected():
    errors = _errors(_with(methods=[
        {"method": "dash", "grid": {"scale": [1.0, 2.0]}},
        {"method": "dash", "label": "again", "scale": 2.0},
    ]))
    assert len(errors) == 1 and errors[0].startswith("methods[1]:") and "repeats a cell of methods[0]" in errors[0]


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
)
def test_shipped_configs_are_valid(name, monkeypatch, tmp_path):
    """Every config in configs/ parses (the GPU ones with their model swapped for one that exists here),
    and spelling out a generator's default option picks the same lm-eval task as leaving it out."""
    from dash_eval.evals.sweep_cells import expand_cells

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    raw = yaml.safe_load((root / "configs" / f"{name}.yaml").read_text())
    raw["model"] = {**raw["model"], "pretrained": "default", "device": "cpu"}
    raw["model"].pop("router", None)
    for m in raw["methods"]:  # routers are made by fit-router; an empty directory stands in for each
        if m.get("router") not in (None, "none"):
            stand_in = tmp_path / Path(m["router"]).name
            stand_in.mkdir(exist_ok=True)
            m["router"] = str(stand_in)
        if m.get("layer_scales"):  # a router directory's multipliers: a stand-in router.json carries some
            stand_in = tmp_path / Path(m["layer_scales"]).name
            stand_in.mkdir(exist_ok=True)
            (stand_in / "router.json").write_text('{"layer_scales": {"0": 1.0}}')
            m["layer_scales"] = str(stand_in)
    config = parse_config(raw, check_model=False)
    assert expand_cells(config)
    if name == "paper_ruler16k":
        tasks = {t.label: t.lm_eval_task for t in config.tasks}
        assert tasks["niah_single_1"] == "dash_niah_single" and tasks["niah_multikey_1"] == "dash_niah_multikey"


def test_null_haystack_means_the_default_one():
    """``haystack: null`` is the task's default haystack (as ``haystack=None`` in Python), not a dropped task."""
    raw = _with(tasks=[{"task": "niah_single", "lengths": [512], "samples": 1, "haystack": None}])
    config = parse_config(raw, check_model=False)
    assert [t.label for t in config.tasks] == ["niah_single"]
    assert config.tasks[0] == parse_config(_with(tasks=[{"task": "niah_single", "lengths": [512], "samples": 1}]),
                                           check_model=False).tasks[0]


@pytest.mark.parametrize("targets,needle", [([], "empty list"), ([0.5, 0.5], "listed twice")])
def test_target_sparsity_list_errors(targets, needle):
    raw = _with(methods=[{"method": "dash", "target_sparsity": targets}])
    errors = _errors(raw)
    assert len(errors) == 1 and errors[0].startswith("methods[0].target_sparsity") and needle in errors[0], errors


@pytest.mark.parametrize("method,knob", [("dash", "alpha"), ("dash", "local_blocks"), ("nsa", "block_size")])
def test_calibrated_parameter_needs_a_range_it_accepts(method, knob):
    """Without ``calibrate_range`` the search starts at 0.01 (real) or 0 (integer): a parameter that does not take
    that value is refused before anything runs, and asked for a range."""
    errors = _errors(_with(methods=[{"method": method, "target_sparsity": 0.5, "calibrate": knob}]))
    assert len(errors) == 1 and errors[0].startswith("methods[0].calibrate:"), errors
    assert knob in errors[0] and "calibrate_range" in errors[0]
    # the default knobs (scale, topk) and a range the parameter takes are fine
    parse_config(_with(methods=[{"method": "dash", "target_sparsity": 0.5}, {"method": "nsa", "target_sparsity": 0.5},
                                {"method": "dash", "label": "by-alpha", "target_sparsity": 0.5, "calibrate": "alpha",
                                 "calibrate_range": [1.1, 2.0]}]), check_model=False)


@pytest.mark.parametrize("bounds", [[0.2, 0.8], [2.5, 3.5], [3, 3.5]])
def test_an_integer_calibrate_range_needs_two_integers(bounds):
    """topk bisects over the integers of its range: a range with fewer than two stopped the cell after the model
    had loaded; it is a config error naming the field."""
    errors = _errors(_with(methods=[{"method": "nsa", "target_sparsity": 0.5, "calibrate_range": bounds}]))
    assert len(errors) == 1 and errors[0].startswith("methods[0].calibrate_range: bad value"), errors
    assert "fewer than two integers" in errors[0]
    config = parse_config(_with(methods=[{"method": "nsa", "target_sparsity": 0.5, "calibrate_range": [0.5, 2.5]}]),
                          check_model=False)
    assert config.methods[0].calibrate_range == (0.5, 2.5)  # topk 1 and 2
    # the ends checked against the method are the integers searched: local_blocks 0.5 searches from 1, which it takes
    parse_config(_with(methods=[{"method": "dash", "target_sparsity": 0.5, "calibrate": "local_blocks",
                                 "calibrate_range": [0.5, 8]}]), check_model=False)


@pytest.mark.parametrize("method", ["nsa", "dash"])
@pytest.mark.parametrize("bounds", [[0, float("inf")], [1, float("inf")], [float("-inf"), 4]])
def test_an_infinite_calibrate_range_is_a_config_error(method, bounds):
    """YAML's .inf: an integer's infinite end stopped the check with OverflowError (int(inf)); a real one was
    refused as a value of the parameter, not as a range."""
    errors = _errors(_with(methods=[{"method": method, "target_sparsity": 0.5, "calibrate_range": bounds}]))
    assert len(errors) == 1 and errors[0].startswith("methods[0].calibrate_range: bad value"), errors
    assert "finite" in errors[0]


def test_jsonl_records_drawn_at_the_calibration_seed_are_refused(tmp_path):
    """A JSONL cell calibrates on calibration.task drawn with calibration.seed: records that ``dash-eval tasks
    sample`` drew as that task with that seed are the calibration prompts themselves."""
    import json

    def jsonl(name, seed, task="niah_single"):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"input": "x", "outputs": ["y"], "metadata": {"task": task, "seed": seed,
                                                                                          "index": i}}) + "\n"
                                for i in range(3)))
        return str(path)

    same, other = jsonl("same.jsonl", 1_000_003), jsonl("other.jsonl", 0)
    target = [{"method": "dash", "target_sparsity": 0.5}]
    errors = _errors(_with(tasks=[{"jsonl": other}, {"jsonl": same}], methods=target))
    assert len(errors) == 1 and errors[0].startswith("tasks[1].jsonl: 3 record(s)"), errors
    assert "seed 1000003" in errors[0] and "calibration.seed" in errors[0]
    # another calibration seed, task or a sweep without targets is fine; so is only the unseen records at the seed
    parse_config(_with(tasks=[{"jsonl": same}], methods=target, calibration={"seed": 5}), check_model=False)
    parse_config(_with(tasks=[{"jsonl": same}], methods=target, calibration={"task": "niah_multikey"}),
                 check_model=False)
    parse_config(_with(tasks=[{"jsonl": same}]), check_model=False)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(Path(other).read_text() + Path(same).read_text())
    parse_config(_with(tasks=[{"jsonl": str(mixed), "samples": 3}], methods=target), check_model=False)


def test_router_layer_scales_and_architecture_are_checked_against_the_model(tmp_path):
    """With the model's config (no weights): a router of the wrong size or without routers, layer multipliers for
    layers the model lacks, and an architecture the patch does not take are config errors."""
    import json

    import torch
    from safetensors.torch import save_file

    save_file({"model.layers.0.self_attn.indexer_q": torch.zeros(10)}, str(tmp_path / "small.safetensors"))
    save_file({"other": torch.zeros(3)}, str(tmp_path / "empty.safetensors"))
    (tmp_path / "scales.json").write_text(json.dumps({"layer_scales": {"99": 2.0}}))
    raw = _with(methods=[
        {"method": "dash", "router": str(tmp_path / "small.safetensors")},
        {"method": "dash", "label": "b", "router": str(tmp_path / "empty.safetensors")},
        {"method": "dash", "label": "c", "layer_scales": str(tmp_path / "scales.json")},
    ])
    errors = _errors(raw, check_model=True)
    assert len(errors) == 3, errors
    assert errors[0].startswith("methods[0].router:") and "[Hkv * D] = [192]" in errors[0]
    assert errors[1].startswith("methods[1].router:") and "no 'layers.<i>.indexer_q' tensors" in errors[1]
    assert errors[2].startswith("methods[2].layer_scales:") and "[99]" in errors[2] and "0..29" in errors[2]

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 1024}))
    raw = _with(model={"pretrained": str(gpt2)}, tasks=[{"task": "niah_single", "lengths": [512], "samples": 1}])
    errors = _errors(raw, check_model=True)
    assert any(e.startswith("model.pretrained:") and "'gpt2' is not supported" in e for e in errors), errors


def test_each_wrong_fixed_parameter_is_named():
    """Fixed parameters wrong on their own are each reported at their path; a combination wrong only together is
    reported at the entry."""
    errors = _errors(_with(methods=[{"method": "nsa", "topk": -1, "block_size": 40},
                                    {"method": "nsa", "label": "b", "block_size": 16, "kernel_stride": 32}]))
    assert [e.split(":")[0] for e in errors] == ["methods[0].topk", "methods[0].block_size", "methods[1]"], errors
    assert "invalid parameters" in errors[2]


def test_output_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    errors = _errors(_with(output=str(tmp_path / "taken")))
    assert len(errors) == 1 and errors[0].startswith("output:") and "is a file" in errors[0], errors


def test_context_is_checked_for_an_entry_with_other_errors():
    """All problems at once: a task entry with a bad ``samples`` still has its lengths checked against the model."""
    errors = _errors(_with(tasks=[{"task": "niah_single", "lengths": [1024, 100_000], "samples": 0}]), check_model=True)
    paths = [e.split(":")[0] for e in errors]
    assert paths == ["tasks[0].samples", "tasks[0].lengths[1]"], errors


def test_a_router_fitted_at_another_block_size_is_said_at_the_check(tmp_path, caplog):
    """A router directory fitted at block size 32, used by an entry that also routes blocks of 64: a warning from
    the config check (before any cell runs), once per size; entries at the router's own size say nothing."""
    import json
    import logging

    import torch
    from safetensors.torch import save_file

    out = tmp_path / "router32"
    out.mkdir()
    save_file({f"model.layers.{i}.self_attn.indexer_q": torch.zeros(192) for i in range(30)},
              str(out / "router.safetensors"))
    (out / "router.json").write_text(json.dumps({"settings": {"block_size": 32}}))
    raw = _with(methods=[
        {"method": "full"},
        {"method": "dash", "router": str(out), "grid": {"block_size": [32, 64], "scale": [1.0, 2.0]}},
        {"method": "dash", "label": "same", "router": str(out), "block_size": 32, "scale": 8.0},
        {"method": "dash", "label": "mean", "router": "none"},
    ])
    with caplog.at_level(logging.WARNING, logger="dash_eval.dash_models.router"):
        parse_config(raw, check_model=True)
    said = [r.getMessage() for r in caplog.records if "fitted at block_size" in r.getMessage()]
    assert len(said) == 1 and "fitted at block_size=32" in said[0] and "blocks of 64" in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dash_eval.dash_models.router"):
        parse_config(raw, check_model=True)
    assert not [r for r in caplog.records if "fitted at block_size" in r.getMessage()]  # said once only
    import shutil

    other = shutil.copytree(out, tmp_path / "model_router")
    raw["model"]["router"] = str(other)  # the model's router, for an entry at dash's default block size
    raw["methods"] = [{"method": "dash", "label": "default-size"}, {"method": "nsa"}]
    with caplog.at_level(logging.WARNING, logger="dash_eval.dash_models.router"):
        parse_config(raw, check_model=True)
    said = [r.getMessage() for r in caplog.records if "fitted at block_size" in r.getMessage()]
    assert len(said) == 1 and "model_router" in said[0] and "blocks of 64" in said[0], said
