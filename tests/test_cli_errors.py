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
        (["--shapes", "decode", "--decode-copies", "-1"], "--decode-copies -1; accepted: 0 (automatic) or 1 to 256"),
        (["--shapes", "decode", "--decode-copies", "4"], "needs a CUDA GPU"),
        # spaces after the commas are not part of the names
        (["--shapes", "decode", "--cases", "dash-decode-128k-kv2-75, nsa-decode-128k-kv2,"], "needs a CUDA GPU"),
    ],
)
def test_bench_refuses_bad_arguments_before_touching_a_gpu(tmp_path, capsys, monkeypatch, args, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on a GPU machine too: nothing may run
    assert main(["bench", "--out", str(tmp_path / "b.csv"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b.csv").exists()



@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("", "is a directory"),
        ("old.csv", "has other columns (case, method, params); rows are appended under its header"),
        ("old.csv/b.csv", "old.csv' is not a folder"),
    ],
)
def test_bench_refuses_an_out_it_cannot_append_to_before_anything_runs(tmp_path, capsys, monkeypatch, out, message):
    """``--out`` is appended to: a directory, a path under a file, or a CSV with other columns (an older version's,
    whose rows would be misaligned silently) is refused in one line, before the GPU check."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old.csv").write_text("case,method,params\nx,dash,{}\n")
    assert main(["bench", "--shapes", "smoke", "--out", out]) == 2
    err = capsys.readouterr().err
    assert message in err and "accepted: a new CSV file" in err and "CUDA" not in err
    assert (tmp_path / "old.csv").read_text() == "case,method,params\nx,dash,{}\n"


def test_bench_writes_its_header_into_an_empty_out_and_appends_under_it(tmp_path, capsys, monkeypatch):
    """An empty ``--out`` (made by ``touch``) gets the header; a second run appends rows under it."""
    import csv

    import torch
    from dash_eval.kernels import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    row = {name: 1.0 for name in bench.FIELDS} | {"case": "smoke-dash", "check": "ok rel_err=0"}
    monkeypatch.setattr(bench, "bench_case", lambda *args, **kwargs: dict(row))
    out = tmp_path / "b.csv"
    out.touch()
    for _ in range(2):
        assert main(["bench", "--shapes", "smoke", "--cases", "smoke-dash", "--out", str(out)]) == 0
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == bench.FIELDS and len(rows) == 3 and rows[1][0] == rows[2][0] == "smoke-dash"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokens", "100"], "--tokens: for cases of your own, which need --method (accepted: dash, nsa, infllmv2)"),
        (["--method", "dash"], "--tokens: required with --method"),
        (["--method", "dash,full", "--tokens", "10"], "unknown 'full'; accepted: dash, nsa, infllmv2"),
        (["--method", "nsa", "--tokens", "1024", "--sparsity", "0.5"], "--sparsity: calibrates dash's scale"),
        (["--method", "dash", "--tokens", "1024,x"], "--tokens '1024,x': 'x' is not a number"),
        (["--method", "dash", "--tokens", "1024", "--sparsity", "1"],
         "--sparsity '1': 1 is out of range; accepted: comma-separated numbers > 0.0 and < 1.0"),
        (["--method", "dash", "--tokens", "64", "--q-heads", "30", "--kv-heads", "4"],
         "--q-heads 30 --kv-heads 4: accepted: query heads a multiple of KV heads"),
        (["--method", "dash", "--tokens", "64", "--head-dim", "512"], "512 is out of range"),
        (["--method", "dash,nsa", "--tokens", "64", "--param", "foo=1"], "no parameter 'foo' in dash or nsa"),
        (["--method", "dash", "--tokens", "64", "--param", "nsa.topk=3"], "'nsa' is not among --method (dash)"),
        (["--method", "dash", "--tokens", "64", "--param", "alpha=0.5"], "parameter alpha=0.5 must be"),
        (["--method", "dash", "--tokens", "64", "--param", "block_size=48"], "do not take block_size=48"),
        (["--method", "nsa,dash", "--tokens", "64", "--param", "block_size=48", "--param", "nsa.kernel_size=32"],
         "--method nsa: the Triton kernels do not take block_size=48"),
        (["--method", "dash", "--tokens", "64", "--shapes", "smoke"], "replace a shape set"),
        (["--noise", "-1"], "--noise -1.0: accepted"),
        (["--q-heads", "0"], "--q-heads: for cases of your own, which need --method"),
        (["--method", "dash", "--tokens", "1", "--decode"],
         "--tokens '1': 1 is out of range; accepted: comma-separated integers >= 2"),
        (["--method", "dash", "--tokens", "64", "--sparsity", "0.5", "--param", "scale=2"],
         "--param scale with --sparsity"),
    ],
)
def test_bench_refuses_bad_cases_of_ones_own(tmp_path, capsys, monkeypatch, args, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--out", str(tmp_path / "b.csv"), *args]) == 2
    assert message in capsys.readouterr().err


def test_bench_builds_cases_of_ones_own():
    """``--method``, ``--tokens`` and the rest: one case per method, length and dash sparsity, each with its
    parameters (unscoped ones to every method that has them), the batch and noise overrides applied."""
    import argparse

    from dash_eval.kernels import bench

    parser = argparse.ArgumentParser()
    bench.configure(parser)
    args = parser.parse_args(["--method", "dash,nsa", "--tokens", "4096,8192", "--q-heads", "28", "--kv-heads", "4",
                              "--head-dim", "64", "--sparsity", "0.5,0.75", "--param", "block_size=32",
                              "--param", "nsa.topk=4", "--param", "alpha=1.25", "--batch", "2", "--noise", "0.25"])
    cases = bench._cases(args)
    assert [c.name for c in cases] == [
        "dash-4096-q28-kv4-d64-s0.5", "dash-4096-q28-kv4-d64-s0.75", "dash-8192-q28-kv4-d64-s0.5",
        "dash-8192-q28-kv4-d64-s0.75", "nsa-4096-q28-kv4-d64", "nsa-8192-q28-kv4-d64",
    ]
    assert cases[0].params == {"block_size": 32, "alpha": 1.25} and cases[0].target_sparsity == 0.5
    assert cases[-1].params == {"block_size": 32, "topk": 4} and cases[-1].target_sparsity is None
    assert all((c.q_heads, c.kv_heads, c.head_dim, c.batch, c.noise, c.nq) == (28, 4, 64, 2, 0.25, c.tokens)
               for c in cases)
    decode = bench._cases(parser.parse_args(["--method", "infllmv2", "--tokens", "65536", "--decode"]))
    assert [(c.name, c.nq, c.q_heads, c.kv_heads, c.head_dim) for c in decode] == [
        ("infllmv2-65536-q32-kv2-d128-decode", 1, 32, 2, 128)
    ]


def test_bench_takes_the_geometry_of_a_model_config(tmp_path, capsys):
    """``--model DIR``: the heads and head dim come from the model's config (an explicit ``head_dim`` wins over
    ``hidden_size / heads``); given together with a head flag, or unreadable, it is refused in one line."""
    import argparse

    import transformers
    from dash_eval.kernels import bench

    transformers.Qwen3Config(num_attention_heads=16, num_key_value_heads=8, hidden_size=1024,
                             head_dim=128).save_pretrained(tmp_path / "qwen3")
    transformers.LlamaConfig(num_attention_heads=12, num_key_value_heads=4, hidden_size=768).save_pretrained(
        tmp_path / "llama")
    parser = argparse.ArgumentParser()
    bench.configure(parser)
    from dash_eval.kernels.bench_cases import model_geometry

    with pytest.MonkeyPatch.context() as mp:  # '~' is expanded: transformers would read it as a hub id
        mp.setenv("HOME", str(tmp_path))
        assert model_geometry("~/llama") == (12, 4, 64)
    for name, geometry in (("qwen3", (16, 8, 128)), ("llama", (12, 4, 64))):
        (case,) = bench._cases(parser.parse_args(["--method", "nsa", "--tokens", "4096", "--model",
                                                  str(tmp_path / name)]))
        assert (case.q_heads, case.kv_heads, case.head_dim) == geometry
    out = str(tmp_path / "b.csv")
    assert main(["bench", "--out", out, "--method", "dash", "--tokens", "64", "--model", str(tmp_path / "llama"),
                 "--kv-heads", "2"]) == 2
    assert "--model sets the heads and head dim; accepted: one or the other" in capsys.readouterr().err
    assert main(["bench", "--out", out, "--method", "dash", "--tokens", "64", "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "--model: no such directory '" in err and "none'; accepted: default, a model directory or a hub name" in err
    (tmp_path / "empty").mkdir()
    assert main(["bench", "--out", out, "--method", "dash", "--tokens", "64", "--model", str(tmp_path / "empty")]) == 2
    assert "no model config could be read" in capsys.readouterr().err
    transformers.LlamaConfig(num_attention_heads=2, num_key_value_heads=1, hidden_size=1024).save_pretrained(
        tmp_path / "wide")
    assert main(["bench", "--out", out, "--method", "dash", "--tokens", "64", "--model", str(tmp_path / "wide")]) == 2
    assert f"--model {str(tmp_path / 'wide')!r} (its config's heads and head dim) '512': 512 is out of range" in (
        capsys.readouterr().err)


def test_bench_list_prints_the_selected_cases_without_a_gpu(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--list", "--shapes", "decode", "--cases", "dash-decode-128k-kv8-75", "--batch", "3"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("| case | method | batch | tokens |")
    assert rows[2].split(" | ")[:7] == [
        "| dash-decode-128k-kv8-75", "dash", "3", "131072", "decode (1 query)", "32 / 8", "128"
    ]
    assert main(["bench", "--list", "--method", "nsa", "--tokens", "1024", "--param", "topk=8"]) == 0
    row = "| nsa-1024-q32-kv2-d128 | nsa | 1 | 1024 | prefill | 32 / 2 | 128 |  | topk=8 | 1 |"
    assert row in capsys.readouterr().out
    assert main(["bench", "--list", "--shapes", "nope"]) == 2  # the same checks as a run


def test_no_command_is_a_usage_error(capsys):
    from dash_eval.cli import main

    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: dash-eval COMMAND" in err and "fit-router" in err
    assert main(["--help"]) == 0 and "usage: dash-eval COMMAND" in capsys.readouterr().out


# --- a reader that leaves early (`dash-eval tasks list | head`) ----------------------------------------------


def test_a_closed_stdout_ends_quietly_with_the_sigpipe_status(tmp_path):
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: every write to stdout fails
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dash_eval.cli", "tasks", "list"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""  # no traceback, and no "Exception ignored ... BrokenPipeError" at exit
    assert proc.returncode == 141  # 128 + SIGPIPE, as the shell reports a program its reader left


def test_tasks_sample_help_says_what_seed_does(capsys):
    with pytest.raises(SystemExit):
        main(["tasks", "sample", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED samples are deterministic by seed (default 0)" in out
