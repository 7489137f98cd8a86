"""The model-free parts of sweeps: grid expansion, cell names, sharding, Pareto frontiers, iso-sparsity
interpolation and target-sparsity bisection."""

from __future__ import annotations

import math

import pytest
from dash_eval.evals.report import interpolate_frontier, pareto_frontier
from dash_eval.evals.sweep_calibrate import bisect_sparsity
from dash_eval.evals.sweep_cells import expand_cells, parse_shard, shard_cells
from dash_eval.evals.sweep_config import MethodEntry, grid_points, parse_config


def _config(methods, tasks=None, **extra):
    raw = {
        "name": "unit",
        "model": {"pretrained": "default"},
        "tasks": tasks or [{"task": "niah_single", "lengths": [512, 1024], "samples": 2, "seed": 0}],
        "methods": methods,
        **extra,
    }
    return parse_config(raw, check_model=False)


def test_grid_points_order_and_fixed_params():
    entry = MethodEntry("dash", {"alpha": 1.5}, {"block_size": (32, 64), "scale": (0.5, 1.0, 2.0)})
    points = grid_points(entry)
    assert len(points) == 6
    assert points[0] == {"alpha": 1.5, "block_size": 32, "scale": 0.5}
    assert points[1] == {"alpha": 1.5, "block_size": 32, "scale": 1.0}  # last key varies fastest
    assert points[-1] == {"alpha": 1.5, "block_size": 64, "scale": 2.0}
    assert grid_points(MethodEntry("full", {}, {})) == [{}]


def test_expand_cells_counts_names_and_defaults():
    config = _config(
        [
            {"method": "full"},
            {"method": "dash", "grid": {"alpha": [1.5, 2.0], "scale": [1, 4.0]}, "local_blocks": 2},
            {"method": "infllmv2", "grid": {"topk": [2, 4]}, "local_blocks": 2},
            {"method": "dash", "target_sparsity": [0.75, 0.9]},
        ]
    )
    cells = expand_cells(config)
    # (1 + 4 + 2 + 2 targets) points x 2 lengths
    assert len(cells) == 18
    assert [c.index for c in cells] == list(range(18))
    names = [c.name(config) for c in cells]
    assert len(set(names)) == len(names)
    hashes = {c.hash(config) for c in cells}
    assert len(hashes) == len(cells)
    dash = [c for c in cells if c.method == "dash" and c.target_sparsity is None]
    # YAML's int 1 for a float parameter is stored as 1.0, and every default is filled in
    assert {c.params["scale"] for c in dash} == {1.0, 4.0}
    assert all(c.params["sigma"] == 1e6 and c.params["local_blocks"] == 2 for c in dash)
    name = dash[0].name(config)
    for part in (
        "niah_single-L512-n2-s0",
        "dash",
        "alpha=1.5",
        "scale=1.0",
        "local_blocks=2",
        "block_size=64",
    ):
        assert part in name
    targeted = [c for c in cells if c.target_sparsity is not None]
    assert {c.target_sparsity for c in targeted} == {0.75, 0.9}
    assert all("scale" not in c.params and c.calibrate == "scale" for c in targeted)
    assert all("target_sparsity=0.75" in c.name(config) or "target_sparsity=0.9" in c.name(config) for c in targeted)
    # the same config expands to the same names (what resuming relies on)
    assert [c.name(config) for c in expand_cells(config)] == names


def test_cell_identity_covers_model_and_seed():
    a = _config([{"method": "full"}])
    b = _config([{"method": "full"}], tasks=[{"task": "niah_single", "lengths": [512, 1024], "samples": 2, "seed": 1}])
    c = parse_config({**a.raw, "model": {"pretrained": "default", "dtype": "bfloat16"}}, check_model=False)
    names = [cfg_cells[0].name(cfg) for cfg, cfg_cells in ((x, expand_cells(x)) for x in (a, b, c))]
    assert len(set(names)) == 3


def test_calibration_key_leaves_out_the_task_samples():
    """Calibration runs on the config's own calibration prompts: more evaluation samples, or another task seed,
    reuse it; another target, length, router or calibration setting does not."""
    def key_and_hash(samples=2, seed=0, target=0.75, router=None, calibration=None):
        entry = {"method": "dash", "target_sparsity": [target], **({"router": router} if router else {})}
        tasks = [{"task": "niah_single", "lengths": [512], "samples": samples, "seed": seed}]
        config = _config([entry], tasks=tasks, **({"calibration": calibration} if calibration else {}))
        (cell,) = expand_cells(config)
        return cell.calibration_key(config), cell.hash(config)

    key, cell_hash = key_and_hash()
    for other in (key_and_hash(samples=16), key_and_hash(seed=5)):
        assert other[0] == key and other[1] != cell_hash
    for other in (key_and_hash(target=0.5), key_and_hash(router="none"),
                  key_and_hash(calibration={"samples": 3})):
        assert other[0] != key


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_are_disjoint_and_complete(n):
    config = _config([{"method": "full"}, {"method": "dash", "grid": {"scale": [0.5, 1.0, 2.0, 4.0]}}])
    cells = expand_cells(config)
    parts = [shard_cells(cells, (i, n)) for i in range(1, n + 1)]
    indices = sorted(c.index for part in parts for c in part)
    assert indices == list(range(len(cells)))
    assert shard_cells(cells, (1, n)) == parts[0]  # deterministic


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "1", "", "-1/2"])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_parse_shard_accepts():
    assert parse_shard("2/4") == (2, 4)
    assert parse_shard(" 1 / 1 ") == (1, 1)


def test_pareto_frontier():
    points = [(0.0, 1.0), (0.5, 0.9), (0.5, 0.95), (0.6, 0.7), (0.7, 0.8), (0.9, 0.2), (0.8, 0.2), (0.9, 0.2)]
    assert pareto_frontier(points) == [(0.0, 1.0), (0.5, 0.95), (0.7, 0.8), (0.9, 0.2)]
    # accuracy never rises along the frontier
    front = pareto_frontier([(i / 10, ((7 * i) % 10) / 10) for i in range(10)])
    assert all(a1 > a2 and s1 < s2 for (s1, a1), (s2, a2) in zip(front, front[1:]))
    assert pareto_frontier([]) == []
    # equal accuracy at higher sparsity dominates
    assert pareto_frontier([(0.2, 0.5), (0.4, 0.5)]) == [(0.4, 0.5)]


def test_interpolate_frontier():
    front = [(0.5, 1.0), (0.75, 0.5), (0.9, 0.2)]
    assert interpolate_frontier(front, 0.5) == 1.0
    assert interpolate_frontier(front, 0.625) == pytest.approx(0.75)
    assert interpolate_frontier(front, 0.875) == pytest.approx(0.25)
    assert interpolate_frontier(front, 0.9) == pytest.approx(0.2)
    assert interpolate_frontier(front, 0.4) == 1.0  # below: the least sparse point covers it
    assert interpolate_frontier([(0.72, 0.8)], 0.5) == 0.8
    assert interpolate_frontier(front, 0.95) is None  # beyond it
    assert interpolate_frontier(front, 0.905) == pytest.approx(0.2)  # within the end tolerance
    assert interpolate_frontier([(0.75, 0.6)], 0.75) == 0.6
    assert interpolate_frontier([], 0.5) is None


def test_bisect_real_parameter_rising():
    calls = []

    def measure(scale):
        calls.append(scale)
        return 1 - 1 / (1 + scale)  # sparsity rises with scale, like dash

    cal = bisect_sparsity(measure, 0.75, parameter="scale", low=0.01, high=100.0, integer=False, tolerance=0.005)
    assert cal.reached and abs(cal.sparsity - 0.75) <= 0.005
    assert cal.value == pytest.approx(3.0, rel=0.1)
    assert len(calls) == len(set(calls)) == len(cal.steps) <= 14


def test_bisect_integer_parameter_falling():
    def measure(topk):
        return 1 - (topk + 3) / 32  # sparsity falls as topk grows, like top-k methods

    cal = bisect_sparsity(measure, 0.75, parameter="topk", low=1, high=32, integer=True, tolerance=0.001)
    assert cal.value == 5 and cal.reached and isinstance(cal.value, int)
    cal = bisect_sparsity(measure, 0.6, parameter="topk", low=1, high=32, integer=True, tolerance=0.001)
    # topk 9 gives 0.625, 10 gives 0.594: 10 is closest, used, and not reached (0.006 off, tolerance 0.001)
    assert cal.value == 10 and not cal.reached


def test_bisect_out_of_reach_returns_closest_end():
    cal = bisect_sparsity(
        lambda s: 0.3 + 0.1 * math.tanh(s), 0.95, parameter="scale", low=0.01, high=100.0, integer=False
    )
    assert not cal.reached and cal.value == 100.0 and len(cal.steps) == 2


def test_bisect_real_parameter_from_integer_ends_gives_a_float():
    """``calibrate_range: [1, 100]`` reads as integers; a real parameter stopped at an end ran as ``scale=100``, an
    int, in the cell's parameters, leaderboard and lm-eval command, where every other cell has ``100.0``."""
    cal = bisect_sparsity(lambda s: 0.3, 0.9, parameter="scale", low=1, high=100, integer=False)
    assert not cal.reached and cal.value == 1.0 and isinstance(cal.value, float)
    assert all(isinstance(x, float) for x, _ in cal.steps)
    cal = bisect_sparsity(lambda s: s / 100, 0.999, parameter="scale", low=1, high=100, integer=False)
    assert cal.value == 100.0 and isinstance(cal.value, float)


def test_bisect_rejects_bad_target():
    with pytest.raises(ValueError, match="target_sparsity"):
        bisect_sparsity(lambda s: s, 1.5, parameter="scale", low=0.1, high=1.0, integer=False)


def test_quiet_lm_eval_leaves_out_what_every_cell_repeats(tmp_path, monkeypatch, capfd):
    """Without --verbose a sweep cell runs inside quiet_lm_eval: lm-eval's INFO lines, the two warnings
    this project's tasks raise by design, its request-building bar and git's complaint outside a
    repository are left out; other warnings still show, and everything is restored afterwards."""
    import logging

    import lm_eval.api.task as lm_task
    import lm_eval.evaluator as lm_evaluator
    from dash_eval.evals.sweep_lm_eval import quiet_lm_eval

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    lm_logger = logging.getLogger("lm_eval")
    lm_logger.addHandler(handler)
    level = lm_logger.level
    lm_logger.setLevel(logging.INFO)  # as lm-eval's setup_logging(INFO) leaves it
    monkeypatch.chdir(tmp_path)  # not a git repository
    tqdm_before, git_before = lm_task.tqdm, lm_evaluator.get_git_commit_hash
    try:
        with quiet_lm_eval():
            logging.getLogger("lm_eval.api.task").warning(
                "dash_niah_single: Custom kwargs can be passed to `--metadata` in console (as json string)"
            )
            logging.getLogger("lm_eval.evaluator_utils").warning(
                "[dash_niah_single] No aggregation function defined for metric 512. Using mean."
            )
            logging.getLogger("lm_eval.evaluator").info("Building contexts for dash_niah_single on rank 0...")
            logging.getLogger("lm_eval.api.task").warning("a real problem")
            assert lm_task.tqdm(range(2)).disable
            git_hash = lm_evaluator.get_git_commit_hash()
        assert records == ["a real problem"]
        assert "fatal" not in capfd.readouterr().err  # git's "fatal: not a git repository"
        assert git_hash == git_before() is None  # the value lm-eval records all the same
        assert (lm_task.tqdm, lm_evaluator.get_git_commit_hash) == (tqdm_before, git_before)
        logging.getLogger("lm_eval.evaluator_utils").warning("No aggregation function defined for metric x")
        assert lm_logger.level == logging.INFO and len(records) == 2
    finally:
        lm_logger.removeHandler(handler)
        lm_logger.setLevel(level)


def test_no_transformers_bars_restores_the_setting():
    from dash_eval.evals.sweep_lm_eval import no_transformers_bars
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        with no_transformers_bars():
            assert not hf_logging.is_progress_bar_enabled()  # no "Loading weights" bar
        assert hf_logging.is_progress_bar_enabled()
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


@pytest.mark.parametrize("verbose", [False, True])
def test_run_cell_quiets_lm_eval_unless_verbose(monkeypatch, verbose):
    """The runner's lm-eval call (stubbed here, no model) runs inside quiet_lm_eval only without --verbose."""
    import logging
    import types

    import lm_eval
    import lm_eval.api.task as lm_task
    import lm_eval.evaluator as lm_evaluator
    from dash_eval.evals.sweep_lm_eval import LmEvalRunner

    config = _config([{"method": "full"}], tasks=[{"task": "niah_single", "lengths": [512], "samples": 1}])
    seen = {}

    def simple_evaluate(**kwargs):
        bar = lm_task.tqdm(range(1))
        seen["bar"] = not bar.disable
        bar.close()
        seen["git"] = lm_evaluator.get_git_commit_hash.__module__
        warning = logging.LogRecord("lm_eval.api.task", logging.WARNING, __file__, 1,
                                    "dash_niah_single: Custom kwargs can be passed to `--metadata`", None, None)
        seen["warning"] = bool(logging.getLogger("lm_eval.api.task").filter(warning))
        return {"results": {}, "dash_attention": {}}

    monkeypatch.setattr(lm_eval, "simple_evaluate", simple_evaluate)
    runner = object.__new__(LmEvalRunner)
    runner.config, runner.verbose = config, verbose
    runner.lm = types.SimpleNamespace(_model_generate=lambda *a, **k: None, generate_until=lambda *a, **k: [])
    runner._set_attention = lambda *args, **kwargs: None
    runner._task_manager = lambda metadata: None
    runner._result = lambda *args: "result"
    assert runner.run_cell(expand_cells(config)[0], lambda n: None) == "result"
    shown = {"bar": verbose, "git": "lm_eval.loggers.utils" if verbose else "dash_eval.evals.sweep_lm_eval",
             "warning": verbose}
    assert seen == shown


def test_equivalent_command_gives_the_model_router_to_dash_cells_only(tmp_path):
    """``model.router`` applies to the dash cells; the reproduce command of a full or nsa cell carries no router,
    which ``--model dash`` refuses with any other method."""
    from dash_eval.evals.sweep_lm_eval import lm_eval_model_args

    router = tmp_path / "router.safetensors"
    router.write_bytes(b"x")  # only its existence is checked without the model
    config = _config([{"method": "full"}, {"method": "nsa", "topk": 4}, {"method": "dash", "scale": 1.0}],
                     model={"pretrained": "default", "router": str(router)})
    by_method = {cell.method: lm_eval_model_args(config, cell, {}) for cell in expand_cells(config)}
    assert "router" not in by_method["full"] and "router" not in by_method["nsa"]
    assert by_method["dash"]["router"] == str(router)


def test_a_cached_integer_calibration_outside_tolerance_is_not_reached(tmp_path):
    """Records written before calibration_reached meant 'within tolerance' called an integer's closest value
    reached; read back, ``reached`` is worked out again from the record's own figures."""
    from types import SimpleNamespace

    from dash_eval.evals.sweep_lm_eval import LmEvalRunner
    from dash_eval.evals.sweep_store import ResultsStore

    config = _config([{"method": "nsa", "target_sparsity": [0.6]}])
    cell = expand_cells(config)[0]
    store = ResultsStore(tmp_path)
    key = cell.calibration_key(config)
    store.write_calibration(key, {"parameter": "topk", "target": 0.6, "value": 1, "sparsity": 0.559, "reached": True})
    record = LmEvalRunner.calibrate(SimpleNamespace(config=config, store=store), cell)
    assert record["value"] == 1 and record["reached"] is False
    store.write_calibration(key, {"parameter": "topk", "target": 0.6, "value": 1, "sparsity": 0.605, "reached": False})
    assert LmEvalRunner.calibrate(SimpleNamespace(config=config, store=store), cell)["reached"] is True


def _stub_runner(config, store, prompts, measure):
    """What ``LmEvalRunner.calibrate`` uses of its runner, without a model: the calibration prompts and a
    sparsity for each value tried."""
    from types import SimpleNamespace

    return SimpleNamespace(config=config, store=store, on_status=lambda text: None,
                           _calibration_prompts=lambda cell: prompts,
                           measure_sparsity=lambda cell, params, p: measure(params))


def test_a_jsonl_cells_topk_search_spans_its_calibration_prompts_blocks(tmp_path):
    """A JSONL cell has no length of its own: its calibration prompts take the file's median length, and the
    default topk search runs up to their number of blocks (8192 tokens: 128 blocks of 64), not 4096's 64."""
    import torch
    from dash_eval.evals.sweep_lm_eval import LmEvalRunner
    from dash_eval.evals.sweep_store import ResultsStore

    data = tmp_path / "long.jsonl"
    data.write_text('{"input": "x", "outputs": ["y"]}\n')
    config = _config([{"method": "nsa", "target_sparsity": [0.2]}], tasks=[{"jsonl": str(data)}])
    (cell,) = expand_cells(config)
    assert cell.length is None and cell.params["block_size"] == 64
    prompts = [torch.zeros(1, 8192, dtype=torch.long)] * 2
    runner = _stub_runner(config, ResultsStore(tmp_path / "out"), prompts, lambda p: 1 - p["topk"] / 128)
    record = LmEvalRunner.calibrate(runner, cell)
    assert record["range"] == [0, 128]
    assert record["reached"] and abs(record["sparsity"] - 0.2) <= 0.01 and record["value"] > 64


@pytest.mark.parametrize("chat", [False, True])
def test_calibration_prompts_are_encoded_as_lm_eval_encodes_the_cells(monkeypatch, chat):
    """lm-eval adds a tokenizer's BOS to a prompt unless the prompt starts with one (a chat template writes its
    own); calibration prompts had a second BOS inside a chat template, so calibration measured other prompts."""
    from types import SimpleNamespace

    import dash_eval.tasks
    import torch
    from dash_eval.evals.sweep_lm_eval import LmEvalRunner

    class Tokenizer:  # a Llama-like tokenizer: adds BOS (id 1) unless told not to
        bos_token = "<s>"
        chat_template = "stand-in"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<s> user: {messages[0]['content']} assistant:"

        def __call__(self, text, return_tensors=None, add_special_tokens=True):
            ids = [1] * add_special_tokens + [1 if w == "<s>" else 2 for w in text.split()]
            return SimpleNamespace(input_ids=torch.tensor([ids]))

    monkeypatch.setattr(dash_eval.tasks, "generate_samples", lambda task, **kw: [
        SimpleNamespace(input="where is the key", answer_prefix="Answer:")] * kw["n"])
    config = _config([{"method": "dash", "target_sparsity": [0.5]}],
                     model={"pretrained": "default", "apply_chat_template": chat})
    cell = expand_cells(config)[0]
    runner = SimpleNamespace(config=config, tokenizer=Tokenizer())
    prompts = LmEvalRunner._calibration_prompts(runner, cell)
    assert len(prompts) == config.calibration.samples
    assert all(int((ids == 1).sum()) == 1 and ids[0, 0] == 1 for ids in prompts)


@pytest.mark.parametrize("damaged", [
    "[1, 2]", '"scale"', "{not json", b"\xff\xfe", '{"parameter": "scale", "target": 0.5, "sparsity": 0.5}',
    '{"parameter": "scale", "target": 0.5, "value": "1.5", "sparsity": 0.5}',
    '{"parameter": "scale", "target": 0.5, "value": 1.5, "sparsity": NaN}',
    '{"parameter": "scale", "target": 0.5, "value": 1.5, "sparsity": 0.5, "per_layer": true}',
])
def test_a_damaged_calibration_record_is_calibrated_again(tmp_path, damaged):
    """A calibration record that is not a usable JSON object failed its cell on every run (AttributeError,
    KeyError; a per-layer one without multipliers ran with none); it is calibrated again and rewritten."""
    from dash_eval.evals.sweep_lm_eval import LmEvalRunner
    from dash_eval.evals.sweep_store import ResultsStore

    config = _config([{"method": "dash", "target_sparsity": [0.5]}])
    cell = expand_cells(config)[0]
    store = ResultsStore(tmp_path)
    path = store.calibration_path(cell.calibration_key(config))
    path.parent.mkdir(parents=True)
    path.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
    tried = []
    runner = _stub_runner(config, store, [], lambda p: tried.append(p["scale"]) or 1 - 1 / (1 + p["scale"]))
    record = LmEvalRunner.calibrate(runner, cell)
    assert tried and record["reached"] and record["value"] == pytest.approx(1.0, rel=0.05)
    assert store.read_calibration(cell.calibration_key(config)) == record


def test_a_per_layer_calibration_is_reached_only_where_every_layer_is():
    """calibrate_per_layer promises every layer at the target: a record whose mean is within tolerance but one layer
    is not reads as not reached, with the worst layer's miss, in the leaderboard row and the report's setting."""
    from dash_eval.evals.report import setting_text
    from dash_eval.evals.sweep import calibration_columns

    record = {"parameter": "scale", "target": 0.6, "value": 2.0, "per_layer": True, "sparsity": 0.601,
              "layer_sparsity": {"0": 0.58, "1": 0.622}, "reached": True, "layers_reached": False, "time_s": 3.0}
    cols = calibration_columns(record)
    assert cols["calibration_reached"] is False and cols["calibration_layer_miss"] == pytest.approx(0.022)
    row = {"params": {"scale": 2.0}, "explicit": [], "target_sparsity": 0.6, "calibrated": "scale", **cols}
    assert "not reached: 0.601 on calibration samples; a layer 0.022 off" in setting_text(row), setting_text(row)
    assert calibration_columns({**record, "layers_reached": True})["calibration_reached"] is True
    plain = calibration_columns({"target": 0.6, "sparsity": 0.58, "reached": False, "time_s": 1.0})
    assert plain == {"calibration_sparsity": 0.58, "calibration_reached": False, "calibration_time_s": 1.0}
