"""What a person running a sweep sees: the plot's legend, progress lines (with and without the bar),
SIGTERM, reports that fail to rebuild, empty shards and the report's title. No model loads: the cells
run through test_sweep_runs' stand-in runner."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
from dash_eval.evals import sweep
from dash_eval.evals.report import markdown_report, plot_figure, sweep_name, write_reports
from dash_eval.evals.sweep import cell_label, run_sweep
from dash_eval.evals.sweep_cells import expand_cells
from dash_eval.evals.sweep_config import parse_config

from dash_eval.cli import main
from tests.test_sweep_runs import FakeRunner, _config


def _run(config, runner, **kw):
    """``run_sweep`` with ``runner``; returns the summary and the lines it logged."""
    lines: list[str] = []
    kw.setdefault("progress", False)
    summary = run_sweep(config, runner_factory=lambda cfg, store: runner, log=lines.append, **kw)
    return summary, lines


def _sweep_cli(monkeypatch, tmp_path, runner, *flags):
    """``dash-eval sweep`` over the 10-cell fake sweep of test_sweep_runs, with ``runner`` as the cell runner."""
    from dash_eval.evals import sweep_cli, sweep_lm_eval

    raw = _config(tmp_path / "out").raw
    monkeypatch.setattr(sweep_cli, "load_config", lambda path: parse_config(raw, check_model=False))
    monkeypatch.setattr(sweep_lm_eval, "LmEvalRunner", lambda config, store, verbose: runner)
    return main(["sweep", "fake.yaml", *flags])


# --- 1. the plot: one legend for the figure, outside the panels ----------------------------------------------


def _rows(n_groups):
    """Three series in each of ``n_groups`` panels, with the point that a legend at the lower left hid."""
    points = {"full": [(0.0, 1.0)], "dash": [(0.007, 0.0), (0.5, 0.6)], "nsa": [(0.75, 0.4)]}
    return [
        {"method": label, "label": label, "task": f"t{g}", "length": 1024, "sparsity": s, "accuracy": a}
        for g in range(n_groups)
        for label, pts in points.items()
        for s, a in pts
    ]


@pytest.mark.parametrize("n_groups", [1, 6])
def test_plot_has_one_legend_below_the_panels(n_groups):
    fig = plot_figure(_rows(n_groups))
    assert len(fig.axes) == n_groups and all(ax.get_legend() is None for ax in fig.axes)
    [legend] = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["full", "dash", "nsa"]
    renderer = fig.canvas.get_renderer()
    lowest_panel = min(ax.get_window_extent(renderer).y0 for ax in fig.axes)
    assert legend.get_window_extent(renderer).y1 < lowest_panel  # below every panel, over no point


# --- 2. progress -------------------------------------------------------------------------------------------------


def test_failed_cell_line_is_written_above_the_bar_not_over_it(tmp_path, capsys):
    run_sweep(_config(tmp_path / "out"), runner_factory=lambda cfg, store: FakeRunner(fail_on=3), progress=True)
    err = capsys.readouterr().err
    start = err.rindex("cell ", 0, err.index("RuntimeError: CUDA out of memory (injected)"))
    assert err[start - 1] in "\r\n"  # tqdm cleared the bar's line first
    assert err[start:].startswith("cell 4/10 dash scale=0.5 niah_single@1024: failed: RuntimeError: CUDA out of")
    assert err[err.index("\n", start) + 1 :].lstrip("\r").startswith("cell 4/10")  # and drew the bar again below


def test_cell_label_names_the_grid_point_and_target():
    config = _config("unused")
    labels = {cell_label(c, config) for c in expand_cells(config) if c.length == 1024}
    # nsa's grid has one topk only: nothing to tell apart, so no parameter in its label
    assert labels == {
        "full niah_single@1024",
        "dash scale=0.5 niah_single@1024",
        "dash scale=8 niah_single@1024",
        "nsa niah_single@1024",
        "dash target=0.75 niah_single@1024",
    }


def test_cell_label_of_a_jsonl_task_says_file(tmp_path):
    data = tmp_path / "myset.jsonl"
    data.write_text('{"input": "x", "outputs": ["y"]}\n')
    config = _config(tmp_path / "out", tasks=[{"jsonl": str(data)}])
    [cell] = [c for c in expand_cells(config) if c.method == "full"]
    assert cell.length is None and cell_label(cell, config) == "full myset@file"
    assert cell_label(dataclasses.replace(cell, length=4096), config) == "full myset@4096"


def test_without_the_bar_each_finished_cell_gets_a_line(tmp_path):
    _, lines = _run(_config(tmp_path / "out"), FakeRunner(fail_on=3))
    cell_lines = [line for line in lines if line.startswith("cell ")]
    assert len(cell_lines) == 10
    assert cell_lines[0].startswith("cell 1/10 full niah_single@512: accuracy 1.000, sparsity 0.0% (")
    assert cell_lines[3].startswith("cell 4/10 dash scale=0.5 niah_single@1024: failed: RuntimeError: CUDA out of")
    assert cell_lines[9].startswith("cell 10/10 dash target=0.75 niah_single@1024: accuracy 0.234, sparsity 87.5% (")


def test_quiet_leaves_out_the_cell_lines_but_not_failures(tmp_path):
    _, lines = _run(_config(tmp_path / "out"), FakeRunner(fail_on=3), cell_lines=False)
    assert len(lines) == 2 and lines[0].startswith("sweep fake: 10 cells")
    assert lines[1].startswith("cell 4/10 dash scale=0.5 niah_single@1024: failed: RuntimeError")


def test_cli_no_progress_prints_cell_lines_unless_quiet(tmp_path, monkeypatch, capsys):
    assert _sweep_cli(monkeypatch, tmp_path / "a", FakeRunner(), "--no-progress") == 0
    err = capsys.readouterr().err
    assert [line.split(":")[0] for line in err.splitlines() if line.startswith("cell ")][:2] == [
        "cell 1/10 full niah_single@512",
        "cell 2/10 full niah_single@1024",
    ]
    assert _sweep_cli(monkeypatch, tmp_path / "b", FakeRunner(), "--no-progress", "--quiet") == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("cell ")]


class SigtermRunner(FakeRunner):
    """Sends this process SIGTERM (as Slurm does at a time limit) while running cell ``term_on``."""

    def __init__(self, term_on):
        super().__init__()
        self.term_on = term_on

    def run_cell(self, cell, on_samples):
        if cell.index == self.term_on:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().run_cell(cell, on_samples)


def test_sigterm_stops_like_ctrl_c_with_status_143_and_restores_the_handler(tmp_path, monkeypatch, capsys):
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        status = _sweep_cli(monkeypatch, tmp_path, SigtermRunner(term_on=4), "--no-progress", "--quiet")
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [] and status == 143
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"dash-eval sweep: interrupted: 4 of 10 cells complete (in {tmp_path / 'out'}); "
        "run the same command again to resume"
    )
    assert handler_after is not None and handler_after.__name__ == "<lambda>"  # the test's own, back in place
    runner = FakeRunner()
    assert _sweep_cli(monkeypatch, tmp_path, runner, "--no-progress", "--quiet") == 0
    assert runner.calls == list(range(4, 10))  # the rerun resumed


# --- 3. a report that fails to rebuild warns and the sweep goes on ---------------------------------------------


def test_report_failure_warns_once_and_the_sweep_goes_on(tmp_path, monkeypatch):
    calls = []

    def flaky_write_reports(root):
        calls.append(root)
        if len(calls) <= 3:
            raise OSError("No space left on device")
        return write_reports(root)

    monkeypatch.setattr(sweep, "write_reports", flaky_write_reports)
    runner = FakeRunner()
    summary, lines = _run(_config(tmp_path / "out"), runner)
    assert runner.calls == list(range(10)) and summary.done == 10 and summary.exit_status == 0
    warnings = [line for line in lines if "report files could not be rebuilt" in line]
    assert warnings == [
        "sweep: warning: the report files could not be rebuilt (OSError: No space left on device); "
        "the cells' results are saved"
    ]
    assert summary.report_error == "" and (tmp_path / "out" / "report.md").exists()  # a later rebuild worked


def test_report_failure_at_the_end_is_in_the_summary_and_no_stale_report_is_printed(tmp_path, monkeypatch, capsys):
    def broken_write_reports(root):
        raise KeyError("task")

    monkeypatch.setattr(sweep, "write_reports", broken_write_reports)
    assert _sweep_cli(monkeypatch, tmp_path, FakeRunner()) == 0
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert f"report files not rebuilt (KeyError: 'task'); 'dash-eval report {tmp_path / 'out'}' rebuilds them" in err


# --- 4. a shard without cells ----------------------------------------------------------------------------------


def test_a_shard_without_cells_says_so(tmp_path):
    runner = FakeRunner()
    summary, lines = _run(_config(tmp_path / "out"), runner, shard=(12, 15))
    assert runner.calls == [] and summary.total == 0 and summary.exit_status == 0
    assert lines == [
        "sweep fake (shard 12/15): this shard has no cells: the sweep has 10 cells, so only shards 1 to 10 of 15 "
        "get any; nothing to run"
    ]


def test_cli_empty_shard_exits_0_with_the_note(tmp_path, monkeypatch, capsys):
    assert _sweep_cli(monkeypatch, tmp_path, FakeRunner(), "--shard", "12/15", "--quiet") == 0
    assert "this shard has no cells: the sweep has 10 cells" in capsys.readouterr().err


# --- 5. the report's title and sample counts -------------------------------------------------------------------


def test_report_title_is_the_configs_name(tmp_path):
    _run(_config(tmp_path / "results-dir"), FakeRunner())
    assert sweep_name(tmp_path / "results-dir") == "fake"
    assert (tmp_path / "results-dir" / "report.md").read_text().startswith("# Sweep report: fake\n")
    (tmp_path / "results-dir" / "config.yaml").unlink()  # no config: the directory's name
    write_reports(tmp_path / "results-dir")
    assert (tmp_path / "results-dir" / "report.md").read_text().startswith("# Sweep report: results-dir\n")


def test_report_counts_one_sample_in_the_singular():
    row = {"method": "full", "task": "t", "length": 512, "sparsity": 0.0, "accuracy": 1.0, "model": "m"}
    assert "## t at 512 tokens (1 sample)\n" in markdown_report([dict(row, samples=1)])
    assert "## t at 512 tokens (3 samples)\n" in markdown_report([dict(row, samples=3)])
