"""Files and folders written atomically (a temporary name renamed into place) get the mode the process umask gives,
0644 and 0755 under umask 022, not tempfile's private 0600 and 0700: results directories and the model cache are
shared (Slurm jobs, group-readable results folders)."""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

import pytest

from dash_eval import file_modes


def _mode(path: str | os.PathLike[str]) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_022(monkeypatch):
    """Umask 022 for the test, then the umask of before; the helper's remembered umask is forgotten for the test
    (and restored with it), so that it reads this one."""
    old = os.umask(0o022)
    monkeypatch.setattr(file_modes, "_umask", None)
    try:
        yield
    finally:
        os.umask(old)


def test_process_umask_reads_without_changing_it(monkeypatch):
    for mask in (0o022, 0o027, 0o002):
        old = os.umask(mask)
        try:
            monkeypatch.setattr(file_modes, "_umask", None)
            assert file_modes.process_umask() == mask
            assert os.umask(mask) == mask  # still set
            assert file_modes.default_mode() == 0o666 & ~mask
            assert file_modes.default_mode(directory=True) == 0o777 & ~mask
        finally:
            os.umask(old)


def test_process_umask_without_proc(monkeypatch):
    """Where /proc cannot tell, the umask is read by setting it and setting it back."""
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    old = os.umask(0o027)
    try:
        assert file_modes._read_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_sweep_store_atomic_write(tmp_path, umask_022):
    from dash_eval.evals import sweep_store

    path = tmp_path / "new" / "cells" / "a" / sweep_store.METRICS_FILE
    sweep_store.atomic_write_text(path, '{"accuracy": 1.0}\n')
    assert path.read_text() == '{"accuracy": 1.0}\n'
    assert _mode(path) == 0o644
    sweep_store.atomic_write_bytes(path, b"{}\n")  # replacing a file too
    assert _mode(path) == 0o644
    assert [p.name for p in path.parent.iterdir()] == [sweep_store.METRICS_FILE]  # no temporary file left


def test_tasks_sample_output_file(tmp_path, umask_022, capsys):
    from dash_eval.tasks.haystacks import NOISE_SENTENCES
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from dash_eval.cli import main

    words = sorted({w for s in NOISE_SENTENCES for w in re.findall(r"\w+|[^\w\s]", s)})
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(
        tmp_path / "tok"
    )
    out = tmp_path / "samples" / "niah.jsonl"
    args = ["tasks", "sample", "niah_single", "--length", "1024", "--n", "2", "--tokenizer", str(tmp_path / "tok")]
    assert main([*args, "--output", str(out)]) == 0, capsys.readouterr()
    assert len(out.read_text().splitlines()) == 2
    assert _mode(out) == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["niah.jsonl"]


def test_embedded_model_directory(tmp_path, umask_022, monkeypatch):
    """The conversion's temporary folder, renamed into the cache, and the files in it (safetensors writes
    model.safetensors 0600): the conversion itself (30 s) is replaced by one that writes such files."""
    from dash_eval.dash_models import embedded

    def fake_convert(gguf: Path, out_dir: Path) -> None:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            fd, tmp = tempfile.mkstemp(dir=out_dir)  # private, as safetensors leaves model.safetensors
            os.close(fd)
            os.replace(tmp, out_dir / name)
        (out_dir / "sub").mkdir(mode=0o700)
        (out_dir / "sub" / "run.sh").touch(mode=0o700)
        (out_dir / "link").symlink_to("config.json")

    monkeypatch.setenv("DASH_EVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "embedded_gguf_path", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(embedded, "_convert", fake_convert)
    target = embedded.embedded_model_path()
    assert target == tmp_path / "cache" / "models" / embedded.EMBEDDED_DIRNAME
    assert _mode(target) == 0o755
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert _mode(target / name) == 0o644, name
    assert _mode(target / "sub") == 0o755
    assert _mode(target / "sub" / "run.sh") == 0o755  # an executable file stays executable
    assert (target / "link").is_symlink()
    assert sorted(p.name for p in target.parent.iterdir()) == [embedded.EMBEDDED_DIRNAME]


def test_modes_follow_the_umask(tmp_path, monkeypatch):
    """Not fixed modes: what the umask gives (0640 and 0750 under 027)."""
    old = os.umask(0o027)
    monkeypatch.setattr(file_modes, "_umask", None)
    try:
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        fd, name = tempfile.mkstemp(dir=folder)
        os.close(fd)
        file_modes.set_default_mode(name)
        assert _mode(name) == 0o640
        file_modes.set_default_modes_tree(folder)
        assert (_mode(folder), _mode(name)) == (0o750, 0o640)
    finally:
        os.umask(old)
