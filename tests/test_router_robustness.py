"""fit-router and router directories at their edges (a review's findings): an output that cannot be written is
refused before the fit; Ctrl-C and SIGTERM end in one line and 130 / 143; a router directory whose router.json
does not describe its tensors (a write cut short) is refused, one without router.json is warned about; a router
fitted on a model of other head geometry is refused even where the vector sizes agree; the tensors file gets the
umask's mode; a calibration text that is not UTF-8 is refused before the model loads."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
import torch
from dash_eval.dash_models import apply_attention
from dash_eval.dash_models import router_fit as rf
from dash_eval.dash_models.router import ROUTER_FILENAME, ROUTER_JSON, load_router_file
from transformers import LlamaConfig, LlamaForCausalLM

from dash_eval.cli import main
from dash_eval.file_modes import default_mode
from tests.test_router_fit import SETTINGS, ByteTokenizer, _tiny

BLOCK = SETTINGS["block_size"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "router"
    rf.fit_router(_tiny(), ByteTokenizer(), rf.FitSettings(**{**SETTINGS, "steps": 2}), out, progress=False)
    return out


def _copy(src, dst):
    dst.mkdir()
    for name in (ROUTER_FILENAME, ROUTER_JSON):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_the_tensors_file_gets_the_umasks_mode(fitted):
    mode = stat.S_IMODE(os.stat(fitted / ROUTER_FILENAME).st_mode)
    assert mode == default_mode() == stat.S_IMODE(os.stat(fitted / ROUTER_JSON).st_mode)


def test_router_json_that_describes_other_tensors_is_refused(fitted, tmp_path):
    mixed = _copy(fitted, tmp_path / "mixed")
    record = json.loads((mixed / ROUTER_JSON).read_text())
    record["tensors_sha256"] = "0" * 64  # as if router.json were left by another fit
    (mixed / ROUTER_JSON).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"router.json describes other tensors than router.safetensors"):
        load_router_file(mixed)
    assert load_router_file(fitted)  # the whole directory loads


def test_tensors_without_router_json_are_warned_about(fitted, tmp_path, caplog):
    bare = _copy(fitted, tmp_path / "bare")
    (bare / ROUTER_JSON).unlink()
    with caplog.at_level(logging.WARNING, logger="dash_eval.dash_models.router"):
        assert load_router_file(bare)
    assert any("router.json is missing beside router.safetensors" in r.getMessage() for r in caplog.records)


def test_a_router_fitted_on_other_head_geometry_is_refused(fitted, tmp_path):
    # 2 KV heads x 16 = 32 values a layer; a model of 1 KV head x 32 needs 32 values too
    other = LlamaForCausalLM(LlamaConfig(
        hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
        head_dim=32, vocab_size=97, max_position_embeddings=512)).eval()
    with pytest.raises(ValueError, match=r"was fitted on a model with 2 KV heads of size 16 .*this model has 1 of "
                                         r"size 32"):
        apply_attention(other, "dash", router=str(fitted), block_size=BLOCK)


def test_calibration_text_that_is_not_utf8_is_refused(tmp_path):
    text = tmp_path / "bin.txt"
    text.write_bytes(b"abc\xd0\x00\xff")
    with pytest.raises(ValueError, match=r"source='.*bin.txt' is not UTF-8 text \(byte 3\)"):
        rf.FitSettings(**{**SETTINGS, "source": str(text)})
    text.write_text("  \n")
    with pytest.raises(ValueError, match=r"is empty; accepted: a UTF-8 text file"):
        rf.FitSettings(**{**SETTINGS, "source": str(text)})


def _cli(tmp_path, output, monkeypatch, load=None):
    import dash_eval.dash_models.loading as loading

    monkeypatch.setattr(loading, "load_model", load or (lambda *a, **k: pytest.fail("the model loaded")))
    return main(["fit-router", "--model", "default", "--output", output, "--tokens", "512", "--sequences", "1"])


@pytest.mark.parametrize("output,needle", [
    ("", "--output is empty"),
    ("{file}/sub", "is a file, not a directory"),
])
def test_an_output_that_cannot_be_written_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys, output,
                                                                            needle):
    (tmp_path / "f").write_text("x")
    assert _cli(tmp_path, output.format(file=tmp_path / "f"), monkeypatch) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("signal_exc,status", [("KeyboardInterrupt", 130), ("Terminated", 143)])
def test_an_interrupted_fit_ends_in_one_line(tmp_path, monkeypatch, capsys, signal_exc, status):
    from dash_eval.interrupts import Terminated

    exc = KeyboardInterrupt if signal_exc == "KeyboardInterrupt" else Terminated

    def interrupted(*args, **kwargs):
        raise exc

    monkeypatch.setattr(rf, "fit_router", interrupted)
    assert _cli(tmp_path, str(tmp_path / "out"), monkeypatch, load=lambda *a, **k: (torch.nn.Linear(1, 1), None)) \
        == status
    err = capsys.readouterr().err
    assert "interrupted; no new router in" in err and "Traceback" not in err
