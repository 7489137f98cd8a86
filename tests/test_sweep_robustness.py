"""What a sweep does with damaged results and awkward config files (a robustness review's findings): a damaged
cell reads as not run (named once in a warning) instead of stopping the sweep or its report; a config file
with a key given twice, text that is not UTF-8, no content, or a directory's name is refused with exit
status 2 before any model loads; a rewritten JSONL task or router makes new cells instead of reusing stale
results."""

from __future__ import annotations

import copy
import json
import logging

import pytest
from dash_eval.evals.sweep_config import ConfigError, load_config, parse_config
from dash_eval.evals.sweep_store import METRICS_FILE, PREDICTIONS_FILE, ResultsStore

from dash_eval.cli import main

ROW = {"cell": "c", "config_hash": "h", "method": "full", "task": "niah_single", "length": 1024, "sparsity": 0.0,
       "accuracy": 1.0}
GOOD = {
    "name": "robust",
    "model": {"pretrained": "default", "dtype": "float32", "device": "cpu"},
    "tasks": [{"task": "niah_single", "lengths": [1024], "samples": 2, "seed": 0}],
    "methods": [{"method": "full"}],
    "output": "results/robust",
}


def _cell(tmp_path, metrics: bytes | None, predictions: bool = True) -> ResultsStore:
    store = ResultsStore(tmp_path)
    d = store.cell_dir("c")
    d.mkdir(parents=True)
    if metrics is not None:
        (d / METRICS_FILE).write_bytes(metrics)
    if predictions:
        (d / PREDICTIONS_FILE).write_text("{}\n")
    return store


@pytest.mark.parametrize("metrics,predictions,reason", [
    (b"\xff\xfe\x00garbage", True, "unreadable (UnicodeDecodeError"),
    (b"[]", True, "holds a JSON list, not an object"),
    (json.dumps({"cell": "c", "config_hash": "h"}).encode(), True, "lacks method, task, sparsity, accuracy"),
    (json.dumps(ROW).encode(), False, "predictions.jsonl: is missing"),
])
def test_a_damaged_cell_reads_as_not_run_with_one_warning(tmp_path, caplog, metrics, predictions, reason):
    store = _cell(tmp_path, metrics, predictions)
    with caplog.at_level(logging.WARNING, logger="dash_eval.evals.sweep_store"):
        assert store.read_metrics("c") is None
        assert not store.is_complete("c", "h")
        assert store.rows() == []
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and reason in warnings[0] and "counts as not run" in warnings[0], warnings


def test_a_whole_cell_reads_as_complete(tmp_path):
    store = _cell(tmp_path, json.dumps(ROW).encode())
    assert store.read_metrics("c") == ROW and store.is_complete("c", "h")


def test_report_skips_a_damaged_cell(tmp_path, capsys):
    _cell(tmp_path, b"[]")
    assert main(["report", str(tmp_path)]) == 0


def _write(tmp_path, text: str | bytes):
    path = tmp_path / "sweep.yaml"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


@pytest.mark.parametrize("text,needle", [
    ("name: a\nname: b\n", "key 'name' given twice in one mapping (first on line 1)"),
    ("name: a\ntasks:\n  - {task: niah_single, samples: 1, samples: 5}\n", "key 'samples' given twice"),
    ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text: byte 0xe9 on line 1"),
    ("# nothing but a comment\n", "the file is empty (or only comments)"),
])
def test_config_files_refused_before_any_check(tmp_path, text, needle):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), check_model=False)
    assert needle in str(info.value)


def test_a_directory_is_not_a_config(tmp_path, capsys):
    assert main(["sweep", str(tmp_path), "--dry-run"]) == 2
    assert "is a directory; give a YAML file" in capsys.readouterr().err


def test_empty_output_option_is_refused(tmp_path, capsys):
    path = _write(tmp_path, json.dumps(GOOD))
    assert main(["sweep", str(path), "--dry-run", "--output", ""]) == 2
    assert "--output is empty" in capsys.readouterr().err


def _errors(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, check_model=False)
    return info.value.errors


def test_triton_backend_on_a_cpu_device_is_refused_at_validation(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    raw = copy.deepcopy(GOOD)
    raw["model"]["attn_backend"] = "triton"
    (error,) = _errors(raw)
    assert error.startswith("model.attn_backend: 'triton' needs a CUDA device (model.device is 'cpu')"), error
    assert "accepted on cpu: auto, reference" in error
    raw["model"]["device"] = "cuda"
    raw["model"]["attn_backend"] = "triton"
    assert not any(e.startswith("model.attn_backend") for e in _errors({**raw, "name": ""}))


def test_a_misspelled_method_key_says_what_is_missing_and_every_unknown_key():
    raw = copy.deepcopy(GOOD)
    raw["methods"] = [{"methd": "dash", "scael": 1.0, "scale": 2.0, "grid": {"alpha": [1.5]}}]
    errors = _errors(raw)
    assert any(e.startswith("methods[0].method: missing; accepted: ") and "dash" in e and "nsa" in e
               for e in errors), errors
    assert any(e.startswith("methods[0].methd: unknown key") for e in errors), errors
    assert any(e.startswith("methods[0].scael: unknown key") for e in errors), errors
    assert not any(e.startswith(("methods[0].scale", "methods[0].grid")) for e in errors), errors


def test_an_empty_grid_is_refused():
    raw = copy.deepcopy(GOOD)
    raw["methods"] = [{"method": "dash", "grid": {}}]
    assert _errors(raw) == ["methods[0].grid: empty; accepted: a mapping of parameter: [values], or no 'grid' key"]


def test_a_label_clash_names_the_entry_that_sets_no_label():
    raw = copy.deepcopy(GOOD)
    raw["methods"] = [{"method": "dash", "label": "nsa"}, {"method": "nsa"}]
    (error,) = _errors(raw)
    assert error.startswith("methods[1]: series 'nsa' is already the series of methods[0] (method dash)"), error


def test_a_rewritten_jsonl_file_or_router_makes_new_cells(tmp_path, monkeypatch):
    from dash_eval.evals.sweep_cells import expand_cells

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data.jsonl"
    data.write_text('{"input": "a", "outputs": ["b"]}\n')
    (tmp_path / "router").mkdir()
    (tmp_path / "router" / "router.json").write_text("{}")
    raw = copy.deepcopy(GOOD)
    raw["tasks"] = [{"jsonl": "data.jsonl", "name": "myset"}]
    raw["methods"] = [{"method": "dash", "router": "router"}]

    def cell():
        config = parse_config(copy.deepcopy(raw), check_model=False)
        (only,) = expand_cells(config)
        return only.hash(config), only.name(config)

    first = cell()
    assert cell() == first  # the same files: the same cell
    data.write_text('{"input": "a", "outputs": ["c"]}\n')
    second = cell()
    assert second != first
    (tmp_path / "router" / "router.json").write_text('{"refitted": true}')
    assert cell() not in (first, second)


def test_a_hub_id_is_read_from_the_local_cache_only(monkeypatch):
    # offline, a hub id not in the cache made the check retry the network for ~25 s before failing
    import transformers

    calls = []

    def fake_from_pretrained(name, **kwargs):
        calls.append(kwargs)
        raise OSError("not in the cached files")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_from_pretrained)
    raw = copy.deepcopy(GOOD)
    raw["model"]["pretrained"] = "nosuchorg/nosuchmodel"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, check_model=True)
    assert calls and all(kw.get("local_files_only") is True for kw in calls)
    (error,) = info.value.errors
    assert error.startswith("model.pretrained: cannot read the model config of 'nosuchorg/nosuchmodel' (not in the "
                            "cached files); accepted: 'default'"), error
