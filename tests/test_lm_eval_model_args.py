"""``--model dash`` model_args: split into HFLM options and method parameters; every bad key or value is
an error that names it, raised before any weight loads."""

import pytest
from dash_eval.evals.lm_model import DashLM, method_param_names, split_model_args


@pytest.mark.parametrize(
    "model_args, expected",
    [
        pytest.param({"method": "nope"}, ["method='nope'", "accepted: ", "dash", "infllmv2"], id="unknown-method"),
        pytest.param(
            {"method": "dash", "alphaa": 1.5}, ["alphaa", "accepted:", "alpha", "batch_size"], id="unknown-key"
        ),
        pytest.param({"method": "full", "topk": 4}, ["topk", "another method", "full"], id="other-methods-param"),
        pytest.param({"method": "dash", "peft": "adapter"}, ["peft", "load_model"], id="hflm-loading-key"),
        pytest.param({"method": "dash", "alpha": 3.0}, ["alpha=3.0", "(1, 2]"], id="alpha-out-of-range"),
        pytest.param({"method": "infllmv2", "block_size": 0}, ["block_size=0", ">= 1"], id="block_size-zero"),
        pytest.param({"method": "nsa", "topk": "many"}, ["topk='many'", "integer"], id="topk-not-int"),
        pytest.param({"method": "full", "dtype": "float8"}, ["dtype='float8'", "bfloat16"], id="bad-dtype"),
        pytest.param({"method": "nsa", "router": "r"}, ["router='r'", "only method=dash", "nsa"], id="router-not-dash"),
        pytest.param({"method": "full", "layer_scales": "s.json"}, ["layer_scales='s.json'", "only method=dash"],
                     id="layer-scales-not-dash"),
        pytest.param({"method": "dash", "attn_backend": "cuda"}, ["attn_backend='cuda'", "auto, reference, triton"],
                     id="bad-attn-backend"),
        # HFLM options HFLM would take silently (any text is true) or trip over only after the model has loaded
        pytest.param({"method": "full", "truncation": "flase"}, ["truncation='flase'", "true or false"],
                     id="bool-option-not-bool"),
        pytest.param({"method": "full", "softmax_dtype": "foo"}, ["softmax_dtype='foo'", "bfloat16"],
                     id="bad-softmax-dtype"),
        pytest.param({"method": "full", "mixed_precision_dtype": "int8"}, ["mixed_precision_dtype='int8'", "float16"],
                     id="bad-mixed-precision-dtype"),
        pytest.param({"method": "full", "prefix_token_id": "bos"}, ["prefix_token_id='bos'", "integer >= 0"],
                     id="prefix-token-not-int"),
        pytest.param({"method": "full", "chat_template_args": "x"}, ["chat_template_args='x'", "a dict"],
                     id="chat-template-args-not-dict"),
        pytest.param({"method": "full", "tokenizer": "/no/such/tokenizer"}, ["tokenizer: no such directory",
                     "/no/such/tokenizer", "'default'"], id="missing-tokenizer-dir"),
        pytest.param({"method": "full", "use_fast_tokenizer": False}, ["use_fast_tokenizer", "tokenizer=PATH"],
                     id="tokenizer-option-without-tokenizer"),
    ],
)
def test_bad_model_args_are_named(model_args, expected):
    with pytest.raises(ValueError) as err:
        DashLM(pretrained="default", device="cpu", **model_args)
    message = str(err.value)
    for text in expected:
        assert text in message, message


def test_tokenizer_options_pass_with_a_tokenizer_by_name():
    hflm, _ = split_model_args("full", {"tokenizer": "default", "use_fast_tokenizer": False, "add_bos_token": None,
                                        "softmax_dtype": "float32", "prefix_token_id": 0, "truncation": True})
    assert hflm["tokenizer"] != "default" and hflm["use_fast_tokenizer"] is False and hflm["truncation"] is True


@pytest.mark.parametrize("kwargs, expected", [
    pytest.param({"method": "dash", "batch_size": 4}, "set_attention batch_size: HFLM option", id="hflm-option"),
    pytest.param({"method": "full", "router": "r"}, "router='r': only method=dash", id="router-not-dash"),
    pytest.param({"method": "nsa", "layer_scales": {0: 2.0}}, "only method=dash", id="layer-scales-not-dash"),
])
def test_set_attention_refuses_what_it_would_ignore(kwargs, expected):
    """A sweep switches methods on one DashLM: an HFLM option there did nothing, and a router given with a method
    that has none was attached silently; both are errors, as they are in model_args."""
    lm = DashLM.__new__(DashLM)  # the checks come before the model is touched
    with pytest.raises(ValueError, match=expected):
        lm.set_attention(**kwargs)


def test_set_attention_clears_routing_with_any_method(tiny):
    """The sweep switches every cell with layer_scales={} (none), whatever the method."""
    lm = DashLM.__new__(DashLM)
    lm._model = tiny
    lm.reset_sparsity = lambda: None
    assert lm.set_attention("nsa", layer_scales={}, router="none", topk=2).topk == 2


def test_split_model_args_routes_each_key():
    hflm, params = split_model_args("dash", {"alpha": 1.25, "scale": 4.0, "batch_size": 4, "max_length": 2048})
    assert hflm == {"batch_size": 4, "max_length": 2048}
    assert params == {"alpha": 1.25, "scale": 4.0}


def test_router_is_not_a_method_param():
    # The per-layer router is a tensor field of dash's parameters; model_args give it as router=PATH.
    assert "router" not in method_param_names("dash")
    assert {"alpha", "block_size", "scale", "sigma", "init_blocks", "local_blocks"} <= set(method_param_names("dash"))


def test_loaded_model_needs_its_tokenizer():
    import torch

    with pytest.raises(ValueError, match="tokenizer"):
        DashLM(pretrained=torch.nn.Linear(2, 2), method="full")


def test_model_args_win_over_lm_evals_own_device_and_batch_size(monkeypatch):
    """lm-eval passes its --device / --batch_size (or their defaults) beside model_args; a key given both ways
    takes model_args' value instead of failing with "got multiple values for keyword argument"."""
    seen = {}
    monkeypatch.setattr(DashLM, "__init__", lambda self, **kw: seen.update(kw))
    cli = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}
    DashLM.create_from_arg_string("pretrained=default,device=cpu,batch_size=2", cli)
    assert seen == {"pretrained": "default", "device": "cpu", "batch_size": 2}
    seen.clear()
    DashLM.create_from_arg_obj({"pretrained": "default"}, cli)
    assert seen == {"pretrained": "default", "batch_size": 1, "device": "cuda:0"}


def test_prompts_longer_than_the_model_are_refused_not_cut():
    """HFLM would cut an over-long prompt from the left (a needle at its start would be gone): every prompt is
    measured before anything is generated, and one that does not fit is an error naming its task and doc."""
    from types import SimpleNamespace

    lm = DashLM(pretrained="default", method="full", device="cpu", max_length=64)
    fits = SimpleNamespace(args=("Hello there.", {"max_gen_toks": 4}), task_name="t", doc_id=0)
    long = SimpleNamespace(args=("word " * 80, {"max_gen_toks": 4}), task_name="t", doc_id=1)
    with pytest.raises(ValueError, match=r"1 of 2 prompt\(s\) do not fit the model: task t doc 1 has \d+ tokens "
                                         r"\+ 4 to generate > max_length 64.*at most 60 tokens"):
        lm.generate_until([fits, long])
    lm._refuse_truncation([fits])  # a prompt that fits passes
    # the answer budget as lm-eval reads it: max_new_tokens is an alias of max_gen_toks (else 256 would count)
    near = SimpleNamespace(args=("word " * 50, {"max_new_tokens": 4}), task_name="t", doc_id=2)
    lm._refuse_truncation([near])
    with pytest.raises(ValueError, match="an answer budget below max_length 64"):
        lm._refuse_truncation([SimpleNamespace(args=("hi", {"max_gen_toks": 64}), task_name="t", doc_id=3)])


def test_prompt_length_counts_special_tokens_as_hflm_adds_them():
    """With add_bos_token=false HFLM encodes without the BOS a tokenizer would add: a prompt that fits then is not
    refused for the token it does not get."""
    from types import SimpleNamespace

    class BosTokenizer:  # one token per word, plus a BOS with special tokens
        bos_token = "<s>"

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [1] * add_special_tokens + [5] * len(text.split())}

    lm = DashLM.__new__(DashLM)
    lm.tokenizer, lm._max_length = BosTokenizer(), 10
    exact = SimpleNamespace(args=("w " * 6, {"max_gen_toks": 4}), task_name="t", doc_id=0)
    lm.add_bos_token = None
    with pytest.raises(ValueError, match="has 7 tokens"):
        lm._refuse_truncation([exact])
    lm.add_bos_token = False
    lm._refuse_truncation([exact])


def test_loglikelihood_contexts_longer_than_the_model_are_refused_not_cut():
    """HFLM would score an over-long loglikelihood request on a context cut from the left (one warning per
    request); as for generation, it is an error naming the task and doc before anything runs."""
    from types import SimpleNamespace

    lm = DashLM(pretrained="default", method="full", device="cpu", max_length=64)
    fits = SimpleNamespace(args=("Hello there.", " Hi"), task_name="t", doc_id=0)
    long = SimpleNamespace(args=("word " * 80, " end"), task_name="t", doc_id=1)
    with pytest.raises(ValueError, match=r"1 of 2 loglikelihood request\(s\) do not fit the model: task t doc 1 has "
                                         r"\d+ context \+ \d continuation tokens > max_length 64 \+ 1"):
        lm.loglikelihood([fits, long])
    ((logprob, _),) = lm.loglikelihood([fits])
    assert logprob < 0
    # rolling windows are cut to fit by design: a long document is scored, not refused
    (total,) = lm.loglikelihood_rolling([SimpleNamespace(args=("word " * 80,), task_name="r", doc_id=0)])
    assert total < 0


def test_loglikelihood_rolling_shows_progress(capsys):
    """Perplexity tasks run one document at a time (for per-document sparsity); one progress bar counts them."""
    from types import SimpleNamespace

    lm = DashLM(pretrained="default", method="full", device="cpu", max_length=64)
    docs = [SimpleNamespace(args=(f"doc {i} " * 5,), task_name="r", doc_id=i) for i in range(3)]
    capsys.readouterr()
    assert len(lm.loglikelihood_rolling(docs)) == 3
    assert "loglikelihood_rolling requests: 100%" in capsys.readouterr().err
    lm.loglikelihood_rolling(docs, disable_tqdm=True)
    assert "loglikelihood_rolling" not in capsys.readouterr().err


def test_a_home_relative_model_path_is_expanded(tmp_path, monkeypatch):
    """transformers does not expand '~': the path is expanded before the saved method is read or the model loads."""
    import dash_eval.evals.lm_model as lm_model

    monkeypatch.setenv("HOME", str(tmp_path))
    seen = []
    monkeypatch.setattr(lm_model, "_saved_attention", lambda p: seen.append(p) or None)

    def stop(pretrained, **kw):
        seen.append(pretrained)
        raise RuntimeError("loaded")

    monkeypatch.setattr(lm_model, "load_model", stop)
    with pytest.raises(RuntimeError, match="loaded"):
        DashLM(pretrained="~/ckpt", device="cpu")
    assert seen == [str(tmp_path / "ckpt")] * 2
