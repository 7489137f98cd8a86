"""The command line's answers to bad arguments and interruptions: one line naming the flag and what is
accepted, and distinct exit statuses, never a traceback. No model loads."""

from __future__ import annotations

import pytest
from dash_eval.evals.sweep_config import parse_config

from dash_eval.cli import main
from tests.test_sweep_runs import FakeRunner, _config


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded although the arguments are rejected")


# --- fit-router --device -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "available", "count", "message"),
    [
        ("cuda", False, 0, "--device 'cuda': asked for but no CUDA device is available here; accepted: cpu"),
        ("cuda:0", False, 0, "--device 'cuda:0': asked for but no CUDA device is available here; accepted: cpu"),
        ("cuda:2", True, 1, "--device 'cuda:2': only 1 CUDA device(s) visible; accepted: cpu, cuda, cuda:0 .. cuda:0"),
        ("cuda:x", True, 1, "--device 'cuda:x': accepted: cpu, cuda, cuda:N, mps"),
        ("tpu", True, 1, "--device 'tpu': accepted: cpu, cuda, cuda:N, mps"),
    ],
)
def test_fit_router_rejects_a_device_that_is_not_here(tmp_path, monkeypatch, capsys, device, available, count,
                                                      message):
    import torch
    from dash_eval.dash_models import loading

    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(loading, "load_model", _no_model)
    args = ["fit-router", "--model", "default", "--output", str(tmp_path / "router"), "--device", device]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"dash-eval fit-router: {message}\n"
    assert not (tmp_path / "router").exists()


# --- tasks sample --tokenizer ------------------------------------------------------------------------------


def test_tasks_sample_rejects_a_missing_tokenizer_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nonexist"
    args = ["tasks", "sample", "niah_single", "--length", "512", "--n", "1", "--output", str(tmp_path / "s.jsonl")]
    assert main([*args, "--tokenizer", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"dash-eval tasks sample: --tokenizer {str(missing)!r}: no such directory; accepted: ")
    assert "a local tokenizer or model directory" in err and "'default'" in err and "offline" in err
    # a directory that holds no tokenizer: transformers' multi-line error becomes one line
    (tmp_path / "empty").mkdir()
    assert main([*args, "--tokenizer", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--tokenizer {str(tmp_path / 'empty')!r}: cannot load a tokenizer from it" in err
    assert not (tmp_path / "s.jsonl").exists()


# --- sweep: Ctrl-C and exit statuses -----------------------------------------------------------------------


def _sweep_cli(monkeypatch, tmp_path, runner: FakeRunner):
    """``dash-eval sweep`` over the fake sweep of test_sweep_runs (10 cells), with ``runner`` as the
    cell runner: neither the config check nor the cells load a model."""
    from dash_eval.evals import sweep_cli, sweep_lm_eval

    raw = _config(tmp_path / "out").raw
    monkeypatch.setattr(sweep_cli, "load_config", lambda path: parse_config(raw, check_model=False))
    monkeypatch.setattr(sweep_lm_eval, "LmEvalRunner", lambda config, store, verbose: runner)
    try:
        return main(["sweep", "fake.yaml", "--no-progress", "--quiet"])
    except KeyboardInterrupt:  # escaping, it would also stop pytest
        pytest.fail("KeyboardInterrupt escaped dash-eval sweep")


def test_sweep_interrupted_says_how_far_it_got_and_exits_130(tmp_path, monkeypatch, capsys):
    assert _sweep_cli(monkeypatch, tmp_path, FakeRunner(interrupt_on=4)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.splitlines()[-1] == (
        f"dash-eval sweep: interrupted: 4 of 10 cells complete (in {tmp_path / 'out'}); "
        "run the same command again to resume"
    )
    runner = FakeRunner()
    assert _sweep_cli(monkeypatch, tmp_path, runner) == 0
    assert runner.calls == list(range(4, 10))  # the rerun resumed


def test_sweep_exit_statuses_tell_failed_cells_from_rejected_configs(tmp_path, monkeypatch, capsys):
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert main(["sweep", str(tmp_path / "missing.yaml"), "--shard", "3/2"]) == 2
    assert _sweep_cli(monkeypatch, tmp_path, FakeRunner(fail_on=3)) == 3
    assert "9 done, 0 skipped (already complete), 1 failed" in capsys.readouterr().err
    assert _sweep_cli(monkeypatch, tmp_path, FakeRunner()) == 0  # the rerun retries the failed cell
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    epilog = capsys.readouterr().out.split("exit status:\n")[1]
    assert [line.split()[0] for line in epilog.splitlines() if line.strip()] == ["0", "2", "3", "130"]


# --- bench ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "-2"], "--batch -2: accepted: a positive number of sequences"),
        (["--shapes", "nope"], "unknown shape set 'nope'; known: smoke, targets, decode, decode-batch"),
        (["--shapes", "decode", "--cases", "dash-decode-128k-kv2-75,x"], "unknown case(s) ['x'] in set decode"),
        (["--shapes", "decode-batch", "--batch", "2"], "needs a CUDA GPU"),  # the arguments pass; no GPU here
    ],
)
def test_bench_refuses_bad_arguments_before_touching_a_gpu(tmp_path, capsys, args, message):
    assert main(["bench", "--out", str(tmp_path / "b.csv"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b.csv").exists()

