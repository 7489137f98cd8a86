"""The numbers of a sweep report, from results directories written by hand (no sweep, no model): paired
counts, damaged cells, the plot's series."""

from __future__ import annotations

import json

import pytest
from dash_eval.evals.paired import paired_rows
from dash_eval.evals.report import plot_figure, write_reports
from dash_eval.evals.sweep_store import ResultsStore


def _cell(store, name, method, sparsity, scores, *, label=None, target=None, index=0, task="niah", length=1024,
          params=None):
    """One complete cell: ``scores`` are its prompts' scores (doc_id = position), accuracy their mean."""
    metrics = {
        "cell": name, "config_hash": name, "model": "m", "method": method, "label": label or method,
        "task": task, "length": length, "samples": len(scores), "seed": 0, "sparsity": sparsity,
        "accuracy": sum(scores) / len(scores), "target_sparsity": target, "cell_index": index,
        "params": params or {}, "explicit": sorted(params or {}),
    }
    predictions = [{"doc_id": i, "score": float(s)} for i, s in enumerate(scores)]
    store.write_cell(name, cell={}, predictions=predictions, lm_eval_results={}, metrics=metrics)


def _grid_dir(root):
    store = ResultsStore(root)
    _cell(store, "full", "full", 0.0, [1, 1, 1, 1], index=0)
    _cell(store, "dash-s1", "dash", 0.5, [1, 1, 1, 0], index=1, params={"scale": 1.0})
    _cell(store, "dash-s4", "dash", 0.8, [0, 0, 0, 1], index=2, params={"scale": 4.0})
    _cell(store, "dash-t75", "dash", 0.74, [1, 0, 0, 0], target=0.75, index=3, params={"scale": 2.0})
    _cell(store, "nsa-t75", "nsa", 0.76, [1, 1, 0, 0], target=0.75, index=4, params={"topk": 4})
    _cell(store, "nsa-k1", "nsa", 0.9, [1, 0, 0, 0], index=5, params={"topk": 1})
    return store


def test_a_baseline_grid_pairs_with_no_one_of_its_cells(tmp_path):
    """dash has two grid cells (no target) and one at 0.75: only the cell at that target pairs with it; the
    cells without a target have two dash cells to choose from and are reported, not paired with the last."""
    store = _grid_dir(tmp_path)
    got = paired_rows(store.rows(), store, "dash")
    # nsa at 0.75 [1,1,0,0] against dash at 0.75 [1,0,0,0]: one prompt gained, none lost
    assert [(r["series"], r["target_sparsity"], r["gained"], r["lost"], r["prompts"]) for r in got] == [
        ("nsa", 0.75, 1, 0, 4)
    ]
    unpaired: list[dict] = []
    paired_rows(store.rows(), store, "dash", unpaired)
    assert sorted(u["cell"] for u in unpaired) == ["full", "nsa-k1"]
    write_reports(tmp_path, paired="dash")
    report = (tmp_path / "report.md").read_text()
    assert "Not paired (2 cell(s))" in report and "full full" in report and "nsa nsa-k1" in report


def test_paired_table_shows_how_many_prompts_each_pair_has(tmp_path):
    """The sign test's n is the prompts both cells scored: a cell that lost a prediction line shows fewer."""
    store = _grid_dir(tmp_path)
    path = store.cell_dir("nsa-t75") / "predictions.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))  # prompt 0 (a tie) gone
    write_reports(tmp_path, paired="dash")
    report = (tmp_path / "report.md").read_text()
    assert "| dash | prompts | gained | lost | p better | p worse |" in report
    assert "| 0.250 (74.0%) | 3 | 1 | 0 | 0.500 | 1.000 |" in report, report


def test_a_damaged_predictions_file_is_named(tmp_path, capsys):
    from dash_eval.cli import main

    _grid_dir(tmp_path)
    bad = tmp_path / "cells" / "nsa-t75" / "predictions.jsonl"
    for text, line in (('{"doc_id": 0, "score": 1.0}\n{"doc_id": 1, "sc', 2), ('{"doc_id": null, "score": 1}\n', 1)):
        bad.write_text(text)
        assert main(["report", str(tmp_path), "--paired", "dash", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{bad}, line {line}: not a prediction" in err and "run the sweep again" in err, err


def test_a_metrics_file_without_its_length_is_a_damaged_cell(tmp_path):
    """The report groups cells by task and length: a row without a length is left out (a sweep redoes it),
    not a KeyError that stops every report of the directory."""
    store = _grid_dir(tmp_path)
    path = store.cell_dir("nsa-k1") / "metrics.json"
    row = json.loads(path.read_text())
    del row["length"]
    path.write_text(json.dumps(row))
    assert store.read_metrics("nsa-k1") is None
    write_reports(tmp_path)
    assert "nsa-k1" not in (tmp_path / "leaderboard.csv").read_text()


def test_plot_tells_a_dozen_long_labelled_series_apart_within_the_figure():
    """Past ten series the colours repeat: the marker must not repeat with them. Long labels must not make the
    legend (hence the PNG, grown to hold it) much wider than the panels."""
    labels = ["full"] + [f"dash-fitted-router-per-layer-scales-variant-{i}" for i in range(11)]
    rows = [
        {"method": "dash", "label": lab, "task": "t", "length": 1024, "sparsity": s, "accuracy": 0.5}
        for lab in labels
        for s in (0.5, 0.99)
    ]
    fig = plot_figure(rows)
    [legend] = fig.legends
    styles = [(h.get_color(), h.get_marker()) for h in legend.legend_handles]
    assert len(styles) == 12 and len(set(styles)) == 12, styles
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).width <= fig.bbox.width
    assert fig.axes[0].get_xlim()[1] > 1.0  # a cell near 100% sparsity is not cut in half by the frame


def test_a_table_of_cells_with_different_sample_counts_says_so(tmp_path):
    """``--all`` puts cells of an earlier config (fewer samples, say) into the same tables: the heading gives
    every count, not the first cell's."""
    store = _grid_dir(tmp_path)
    _cell(store, "dash-old", "dash", 0.6, [1, 0], index=6, params={"scale": 1.5})
    write_reports(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "## niah at 1024 tokens (2 or 4 samples)" in report


@pytest.mark.parametrize("content", [b"[1]\n", b"\xff\xfe", b'{"error": "RuntimeE'])
def test_a_damaged_error_file_is_a_failed_cell_in_the_report(tmp_path, content):
    """A failed cell's error.json that is not a JSON object stopped every report of the directory."""
    _grid_dir(tmp_path)
    (tmp_path / "cells" / "broken").mkdir()
    (tmp_path / "cells" / "broken" / "error.json").write_bytes(content)
    write_reports(tmp_path)
    assert "| broken | unreadable error.json |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("content", [b'{"cells": "xy"}', b'{"cells": ["ab"]}', b"\xff", b"[]"])
def test_a_damaged_manifest_counts_every_cell_as_current(tmp_path, content):
    """As a cut cells.json already did; a list, a string or bytes that are not UTF-8 stopped the report."""
    _grid_dir(tmp_path)
    (tmp_path / "cells.json").write_bytes(content)
    write_reports(tmp_path)
    assert (tmp_path / "leaderboard.csv").read_text().count("\n") == 7  # the header and all six cells


def test_paired_counts_only_prompts_both_cells_scored_either_side(tmp_path):
    """The baseline's cell, not only the paired one, may lack a prediction line: that prompt is left out of the
    count (the test above drops a line on the other side only)."""
    store = _grid_dir(tmp_path)
    path = store.cell_dir("dash-t75") / "predictions.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))  # baseline's prompt 0 gone
    got = paired_rows(store.rows(), store, "dash")
    # nsa [1,1,0,0] against dash [-,0,0,0]: prompts 1-3, one gained (prompt 1)
    assert [(r["series"], r["gained"], r["lost"], r["prompts"]) for r in got] == [("nsa", 1, 0, 3)]


@pytest.mark.parametrize("field,value", [("seed", 1), ("samples", 5)])
def test_cells_with_other_prompts_are_not_paired(tmp_path, field, value):
    """A cell whose prompts differ from the baseline's (another seed or sample count) is reported as unpaired,
    never sign-tested against prompts it did not answer."""
    store = ResultsStore(tmp_path)
    _cell(store, "full", "full", 0.0, [1, 1, 1, 1], index=0)
    _cell(store, "dash", "dash", 0.5, [1, 0, 0, 0], index=1)
    metrics_path = store.cell_dir("dash") / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics[field] = value
    metrics_path.write_text(json.dumps(metrics))
    unpaired: list[dict] = []
    assert paired_rows(store.rows(), store, "full", unpaired) == []
    assert [u["cell"] for u in unpaired] == ["dash"]


def test_leaderboard_writes_non_finite_numbers_as_blank():
    """A NaN or infinite figure (an accuracy over no prompt, a stderr of one) is a blank CSV field, never the text
    'nan' / 'inf' that a spreadsheet or a later sum reads as a number."""
    import csv
    import io

    from dash_eval.evals.leaderboard import leaderboard_csv

    row = {"model": "m", "method": "dash", "label": "dash", "accuracy": float("nan"), "accuracy_stderr": float("inf"),
           "sparsity": 0.5, "calibration_reached": True, "params": {"scale": 2.0}}
    (got,) = csv.DictReader(io.StringIO(leaderboard_csv([row])))
    assert (got["accuracy"], got["accuracy_stderr"], got["sparsity"]) == ("", "", "0.5")
    assert got["scale"] == "2.0" and got["calibration_reached"] == "true"
