"""Config precedence, datasets, votes, metrics and the run store: no model needed."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from inferencekit.config import RunConfig, resolve_config
from inferencekit.datasets import Sample, gsm8k_reference, load_dataset
from inferencekit.errors import UserError
from inferencekit.models import model_defaults, resolve_model
from inferencekit.prompts import build_messages
from inferencekit.results.metrics import accuracy, pass_at_k, wilson_interval
from inferencekit.results.records import Record
from inferencekit.results.store import RunStore, run_dir_for
from inferencekit.voting import aggregate, vote

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside this checkout")


# --- configuration ---------------------------------------------------------------------------


def test_precedence_runtime_over_generation_over_model_args_over_file_over_preset(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"temperature": 0.3, "max_new_tokens": 100, "n": 3, "exp_name": "file"}))
    preset = {"max_new_tokens": 999, "top_p": 0.5, "model_args": {"n_ctx": 1024, "n_threads": 1}}
    config = resolve_config(
        runtime={"exp_name": "cli", "limit": None},
        generation={"temperature": 0.7},
        model_args={"n_ctx": 4096},
        config_file=cfg_file,
        preset_defaults=lambda name: preset,
    )
    assert config.temperature == 0.7  # generation flag beats the file
    assert config.max_new_tokens == 100  # file beats preset
    assert config.top_p == 0.5  # preset beats built-in default
    assert config.n == 3 and config.exp_name == "cli"
    assert config.model_args == {"n_ctx": 4096, "n_threads": 1}  # model args beat the preset's, key by key
    assert config.limit is None and config.seed == 0  # built-in defaults


def test_command_line_flags_go_to_the_layers_config_assigns(tmp_path):
    from inferencekit.cli import build_parser
    from inferencekit.config import GENERATION_KEYS, MODEL_ARG_KEYS, resolve_flags
    from inferencekit.models import GeneratorSpec

    assert set(GENERATION_KEYS) <= set(RunConfig.model_fields)
    assert set(MODEL_ARG_KEYS) <= set(GeneratorSpec.__dataclass_fields__)
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"temperature": 0.3, "exp_name": "file", "model_args": {"dtype": "float16"}}))
    preset = {"temperature": 0.1, "model_args": {"n_ctx": 1024}}
    # a generation flag beats the file; --dtype is a model argument (beats the file's), below --model-arg
    config = resolve_flags({"temperature": 0.7, "dtype": "bfloat16", "exp_name": None, "n": 2,
                            "model_args": {"attn_implementation": "sdpa"}}, config_file=cfg_file,
                           preset_defaults=lambda name: preset)
    assert config.temperature == 0.7 and config.exp_name == "file" and config.n == 2
    assert config.model_args == {"n_ctx": 1024, "dtype": "bfloat16", "attn_implementation": "sdpa"}
    assert resolve_flags({"dtype": "float32", "model_args": {"dtype": "float16"}}).model_args == {"dtype": "float16"}
    # the CLI's own flags: every one it hands over is a RunConfig key or a model argument
    args = vars(build_parser().parse_args(["run"]))
    handed = set(args) - {"command", "config", "no_resume", "no_progress", "model_arg", "reward_model_arg", "vote"}
    assert handed <= set(RunConfig.model_fields) | set(MODEL_ARG_KEYS)


def test_registry_checks_collisions_and_names_accepted_entries():
    from inferencekit.registry import Registry

    shapes: Registry[int] = Registry("shape")

    @shapes.register("circle", "round")
    def circle() -> int:
        return 1

    assert shapes.get("round") is circle and shapes.names() == ["circle", "round"] and "circle" in shapes
    shapes.add("circle", circle)  # the same entry again: fine
    with pytest.raises(ValueError, match="shape 'circle' is already registered by .*circle"):
        shapes.add("circle", len)
    with pytest.raises(UserError, match=r"^unknown shape 'square'; accepted: circle, round$"):
        shapes.get("square")
    shapes.unregister("round")
    assert shapes.names() == ["circle"]


def test_every_registry_refuses_unknown_names_in_one_line():
    from inferencekit.models import BACKENDS
    from inferencekit.reward_models.registry import format_class
    from inferencekit.search import get_method

    assert BACKENDS == ("hf", "llamacpp", "openai", "vllm")
    for lookup, kind in [(get_method, "method"), (format_class, "reward model format"),
                         (lambda name: resolve_model("smollm2-135m", name), "backend"),
                         (lambda name: load_dataset(name), "dataset")]:
        with pytest.raises(UserError) as info:
            lookup("nope.yaml" if kind == "dataset" else "nope")
        assert "\n" not in str(info.value)
        if kind != "dataset":  # a dataset name may also be a file: it says the file is missing
            assert str(info.value).startswith(f"unknown {kind} 'nope'; accepted: ")


def test_yaml_files_that_are_not_mappings_are_one_line_errors(tmp_path):
    from inferencekit.config import load_config_file
    from inferencekit.presets import load_preset

    (tmp_path / "bad.yaml").write_text("a: [1,\n b")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match=r"^config file .*bad.yaml is not valid YAML: [^\n]+$"):
        load_config_file(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match=r"^config file .*list.yaml must hold a mapping"):
        load_config_file(tmp_path / "list.yaml")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "odd.yaml").write_text("- 1\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFERENCEKIT_PRESETS", str(tmp_path))
        with pytest.raises(UserError, match=r"^preset .*odd.yaml must hold a mapping"):
            load_preset("models", "odd")


def test_error_lines_and_hub_ids():
    from inferencekit.errors import first_line, one_line
    from inferencekit.hub import is_hub_id

    assert first_line(OSError("  cannot open x\n  traceback detail")) == "cannot open x"
    assert first_line(KeyError()) == "KeyError" and first_line("") == ""
    assert one_line(ValueError("a\n  b")) == "a b" and len(one_line(ValueError("x" * 900))) == 500
    assert is_hub_id("Qwen/Qwen2.5-Math-7B") and not is_hub_id("gpt2") and is_hub_id("gpt2", allow_bare=True)
    assert not any(is_hub_id(p, allow_bare=True) for p in ("./a/b", "/abs/path", "~/x/y", "org/model.gguf"))


def test_preset_is_chosen_by_the_model_named_in_the_config_file(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model: qwen2.5-math-1.5b-instruct\n")
    config = resolve_config(config_file=cfg_file, preset_defaults=model_defaults)
    assert config.backend == "hf" and config.max_new_tokens == 2048 and "boxed" in config.system_prompt


def test_unknown_config_key_is_an_error_naming_accepted_keys(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("temprature: 0.5\n")
    with pytest.raises(UserError, match=r"unknown key 'temprature'.*accepted: .*temperature"):
        resolve_config(config_file=cfg_file)


@pytest.mark.parametrize(
    ("key", "value"), [("temperature", -1), ("top_p", 0), ("n", 0), ("aggregation", "max"), ("box_match", "middle"),
                       ("grader", "sympy")]
)
def test_bad_values_are_rejected(key, value):
    with pytest.raises(UserError, match=key):
        resolve_config(runtime={key: value})


def test_config_round_trips_through_yaml():
    config = RunConfig(votes="majority,weighted", stop="\n\n\n", model_args={"n_ctx": 2048})
    again = RunConfig(**yaml.safe_load(config.to_yaml()))
    assert again == config and again.votes == ["majority", "weighted"] and again.stop == ["\n\n\n"]


# --- models: name resolution ---------------------------------------------------------------


def test_resolve_model_by_preset_path_and_hub_id(tmp_path):
    spec = resolve_model("smollm2-135m")
    assert spec.backend == "llamacpp" and spec.path.endswith(".gguf") and Path(spec.path).is_file()
    hf_dir = tmp_path / "my-model"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    assert resolve_model(str(hf_dir)).backend == "hf"
    assert resolve_model(str(hf_dir)).name == "my-model"
    assert resolve_model("Qwen/Qwen2.5-Math-1.5B-Instruct").backend == "hf"
    assert resolve_model(spec.path).backend == "llamacpp"
    assert resolve_model("smollm2-135m", model_args={"n_ctx": 512}).n_ctx == 512


def test_a_transformers_checkpoint_goes_to_vllm_only_where_vllm_is_installed_and_a_gpu_is_visible(
        tmp_path, monkeypatch):
    import importlib.util

    import torch

    hf_dir = tmp_path / "m"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    installed = importlib.util.find_spec("vllm") is not None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # this machine has no GPU: say it has one
    assert resolve_model(str(hf_dir)).backend == ("vllm" if installed else "hf")
    assert resolve_model("Qwen/Qwen2.5-Math-1.5B-Instruct").backend == ("vllm" if installed else "hf")
    assert resolve_model(str(hf_dir), backend="hf").backend == "hf"  # an explicit choice stands
    assert resolve_model("smollm2-135m").backend == "llamacpp"  # a GGUF file stays on llama.cpp
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # vLLM not installed
    assert resolve_model(str(hf_dir)).backend == "hf"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("/nope/model.gguf", "model file not found"),
        ("./missing-folder", "unknown model"),
    ],
)
def test_unknown_models_say_what_is_accepted(name, message):
    with pytest.raises(UserError, match=message):
        resolve_model(name)


def test_unknown_model_argument_names_accepted_ones():
    with pytest.raises(UserError, match=r"unknown model argument\(s\) n_gpu.*accepted: .*n_ctx"):
        resolve_model("smollm2-135m", model_args={"n_gpu": 1})


# --- datasets -------------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize(
    ("name", "rows", "first_reference"),
    [("gsm8k", 1319, "18"), ("math500", 500, r"\left( 3, \frac{\pi}{2} \right)"), ("aime24", 30, "204"),
     ("amc23", 40, "27")],
)
def test_builtin_datasets_from_a_data_dir(name, rows, first_reference):
    ds = load_dataset(name, data_dir=str(SHARED_DATA))
    assert len(ds.samples) == rows
    assert ds.samples[0].reference == first_reference
    assert ds.samples[0].index == 0 and ds.samples[-1].index == rows - 1
    assert ds.style == ("gsm8k" if name == "gsm8k" else "math")


@needs_shared
def test_data_dir_from_environment_and_limit(monkeypatch):
    monkeypatch.setenv("INFERENCEKIT_DATA_DIR", str(SHARED_DATA))
    ds = load_dataset("math500", limit=7)
    assert len(ds.samples) == 7


@needs_shared
def test_gsm8k_k_shot_prompts_use_the_train_split():
    ds = load_dataset("gsm8k", data_dir=str(SHARED_DATA), num_shots=2, limit=1)
    messages = build_messages(ds.samples[0], ds)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    train_first = json.loads((SHARED_DATA / "gsm8k" / "train.jsonl").open().readline())
    assert train_first["question"] in messages[0]["content"]
    assert messages[1]["content"].endswith("\\boxed{72}.") and "<<" not in messages[1]["content"]
    assert ds.samples[0].input in messages[-1]["content"] and "\\boxed{}" in messages[-1]["content"]


def test_embedded_gsm8k_mini_needs_no_data_dir():
    ds = load_dataset("gsm8k-mini")
    assert len(ds.samples) == 20 and ds.samples[0].reference == "18" and ds.style == "gsm8k"


def test_gsm8k_reference_parsing():
    assert gsm8k_reference("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert gsm8k_reference("#### -5") == "-5"


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_files_with_field_mapping(tmp_path, suffix):
    rows = [{"q": f"What is {i}+1?", "gold": str(i + 1), "extra": i} for i in range(5)]
    path = tmp_path / f"mine{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import datasets

        table = datasets.Dataset.from_list(rows)
        table.to_csv(str(path)) if suffix == ".csv" else table.to_parquet(str(path))
    ds = load_dataset(str(path), input_field="q", reference_field="gold", limit=3)
    assert ds.name == "mine" and [s.reference for s in ds.samples] == ["1", "2", "3"]
    assert ds.samples[2].input == "What is 2+1?"


def test_local_file_errors(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"q": "x", "a": "1"}) + "\n")
    with pytest.raises(UserError, match=r"no input field .*among q, a; name it with --input-field"):
        load_dataset(str(path))
    with pytest.raises(UserError, match="dataset file not found"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match=r"unknown dataset 'gsm9k'; accepted: .*gsm8k.*math500"):
        load_dataset("gsm9k")
    with pytest.raises(UserError, match=r"no test.jsonl.* in "):
        load_dataset("math500", data_dir=str(tmp_path))


def test_user_registered_dataset_preset(tmp_path, monkeypatch):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "tiny.yaml").write_text("input_field: q\nreference_field: a\nstyle: math\n")
    data = tmp_path / "data" / "tiny"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text(json.dumps({"q": "1+1?", "a": "2"}) + "\n")
    monkeypatch.setenv("INFERENCEKIT_PRESETS", str(tmp_path))
    ds = load_dataset("tiny", data_dir=str(tmp_path / "data"))
    assert ds.samples == [Sample(index=0, input="1+1?", reference="2")]


# --- aggregation and votes --------------------------------------------------------------------


def test_aggregations():
    scores = [0.9, 0.5, 0.8]
    assert aggregate(scores, "min") == 0.5
    assert aggregate(scores, "last") == 0.8
    assert aggregate(scores, "model") == 0.8
    assert aggregate(scores, "prod") == pytest.approx(0.36)
    assert aggregate(scores, "mean") == pytest.approx(2.2 / 3)
    assert aggregate([0.4, math.nan], "last") == 0.4  # NaN steps are skipped
    assert math.isnan(aggregate([], "min")) and math.isnan(aggregate([math.nan], "mean"))


def test_votes_on_a_hand_checked_case():
    answers = ["2", "3", "\\frac{1}{2}", "3", "\\dfrac{1}{2}", None]
    scores = [[0.9], [0.2], [0.6], [0.3], [0.5], [1.0]]
    assert vote("majority", answers) == "3"  # 3 appears twice; 1/2 twice too but later
    assert vote("weighted", answers, scores) == "\\frac{1}{2}"  # 1.1 beats 0.9 and 0.5
    assert vote("best", answers, scores) == "2"  # None answers never win
    assert vote("majority", [None, None]) is None


def test_weighted_equals_majority_when_scores_are_equal():
    answers = ["1", "2", "2", "3", "1", "2", "4"]
    for subset in combinations(range(len(answers)), 4):
        picked = [answers[i] for i in subset]
        assert vote("weighted", picked, [[0.7]] * 4) == vote("majority", picked)


def test_min_and_last_votes_use_their_aggregation():
    answers = ["a", "b"]
    scores = [[0.1, 0.9], [0.5, 0.6]]
    assert vote("min_vote", answers, scores) == "b" and vote("last_vote", answers, scores) == "a"


def test_best_index_and_same_answer_shared_by_votes_and_chat():
    from inferencekit.voting import best_index, same_answer

    assert best_index([math.nan, 0.5, 0.9, 0.9]) == 2  # highest, the earliest on ties, NaN skipped
    assert best_index([0.9, 0.5], eligible=[False, True]) == 1 and best_index([math.nan]) is None
    assert same_answer(["\\frac12", "2", None, "\\frac{1}{2}"], "\\frac{1}{2}") == [True, False, False, True]
    assert same_answer(["1"], None) == [False]


def test_unknown_vote():
    with pytest.raises(UserError, match="unknown vote 'mode'; accepted: .*majority"):
        vote("mode", ["1"])


# --- metrics ---------------------------------------------------------------------------------


def test_wilson_interval_matches_hand_computation():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4901624, abs=1e-6) and hi == pytest.approx(0.9433178, abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 0.0)
    assert accuracy([True, False, True, True]) == {
        "accuracy": 0.75, "n": 4, "correct": 3, "ci95": [round(x, 6) for x in wilson_interval(3, 4)]
    }


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0


# --- run store -------------------------------------------------------------------------------


def test_run_dir_layout():
    path = run_dir_for("w", "gsm8k", "smollm2-135m", None, "exp 1")
    assert path == Path("w/gsm8k/smollm2-135m+none+exp-1")


def test_store_ignores_and_repairs_a_torn_last_line(tmp_path):
    store = RunStore(tmp_path)
    store.append(Record(0, extra={"x": 1}))
    store.append(Record(1, extra={"x": 2}))
    with store.predictions_path.open("a") as f:
        f.write('{"index": 2, "x"')  # a crash mid-write
    assert [r.index for r in store.records()] == [0, 1]
    store.repair()
    store.append(Record(2, extra={"x": 3}))
    assert [r.extra["x"] for r in store.records()] == [1, 2, 3]
    assert store.predictions_path.read_text().count("\n") == 3


@pytest.mark.parametrize("template", ["Solve {input} and put it in \\boxed{}", "No placeholder here"])
def test_prompt_templates_are_checked(template):
    with pytest.raises(UserError, match="prompt_template"):
        resolve_config(runtime={"prompt_template": template})
    assert resolve_config(runtime={"prompt_template": "Q: {input}\nA: \\boxed{{}}"}).prompt_template


def test_api_keys_stay_out_of_config_yaml():
    config = RunConfig(model_args={"api_key": "sk-secret", "base_url": "http://127.0.0.1:1/v1"})
    assert "sk-secret" not in config.to_yaml()
    other = RunConfig(model_args={"api_key": "other", "base_url": "http://127.0.0.1:2/v1"})
    assert config.result_keys() == other.result_keys()


def test_rows_missing_a_field_name_the_row(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"question": "a", "answer": "1"}) + "\n" + json.dumps({"question": "b"}) + "\n")
    with pytest.raises(UserError, match="row 1 lacks the field"):
        load_dataset(str(path))
