"""HarnessLM: lm-evaluation-harness runs local task YAMLs (local JSONL data, offline) on a zoo
model, and its metrics agree with our own harness's on the same documents."""
from __future__ import annotations

import json
import textwrap

import pytest

from research.evaluation import CharTokenizer, Harness, evaluate
from research.evaluation.lm_eval_adapter import HarnessLM, evaluate_tasks
from research.evaluation.requests import GenerateRequest
from research.evaluation.task_spec import load_task
from research.models.config import ConfigError
from tests.evaluation.conftest import capitals_task_yaml, tiny_model

CAPITALS = [("France", ["Paris", "Rome", "Lima"], 0), ("Peru", ["Oslo", "Lima", "Quito"], 1),
            ("Italy", ["Madrid", "Bern", "Rome"], 2), ("Norway", ["Oslo", "Riga", "Kyiv"], 0),
            ("Spain", ["Porto", "Madrid", "Seville"], 1), ("Chile", ["Lima", "La Paz", "Santiago"], 2)]
TEXTS = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
         "all that glitters is not gold, and more words follow here"]
WORDS = ["cat", "dog", "sun", "moon", "tree", "fish"]


def _write_jsonl(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


def _yaml(path, body):
    path.write_text(textwrap.dedent(body).lstrip())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random GPT with a character tokenizer, and each task both as lm-eval YAML and as our JSON task."""
    tmp = tmp_path_factory.mktemp("tasks")
    tokenizer = CharTokenizer()
    model, params = tiny_model("gpt2-tiny", vocab_size=tokenizer.vocab_size)
    harness = Harness(model, params, tokenizer, batch_size=8)
    _write_jsonl(tmp / "mc.jsonl", [{"country": c, "options": o, "label": g} for c, o, g in CAPITALS])
    _write_jsonl(tmp / "text.jsonl", [{"text": t} for t in TEXTS])
    # Half the answers are what the model itself writes, so exact match is 0.5 rather than 0 in both.
    greedy = harness.generate_until([GenerateRequest(f"Say {w}:", ("\n",), 6) for w in WORDS])
    _write_jsonl(tmp / "gen.jsonl", [{"word": w, "answer": g.text if i % 2 else w + "!"}
                                     for i, (w, g) in enumerate(zip(WORDS, greedy))])
    lm_eval_dir = tmp / "lm_eval_tasks"
    lm_eval_dir.mkdir()
    (lm_eval_dir / "capitals.yaml").write_text(
        capitals_task_yaml("local_capitals", tmp / "mc.jsonl", ("acc", "acc_norm")))
    _yaml(lm_eval_dir / "say.yaml", f"""
        task: local_say
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp / 'gen.jsonl'}
        test_split: test
        output_type: generate_until
        doc_to_text: "Say {{{{word}}}}:"
        doc_to_target: "{{{{answer}}}}"
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: 6
          do_sample: false
        metric_list:
          - metric: exact_match
        """)
    _yaml(lm_eval_dir / "text.yaml", f"""
        task: local_text
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp / 'text.jsonl'}
        test_split: test
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{{{text}}}}"
        metric_list:
          - metric: word_perplexity
          - metric: byte_perplexity
          - metric: bits_per_byte
        """)
    ours = {"capitals": {"name": "capitals", "output_type": "multiple_choice", "prompt":
                         "Q: What is the capital of {country}?\nA:", "target": "{label}", "choices": "options",
                         "metrics": ["acc", "acc_norm"], "fewshot_split": None, "data_files": {"test": "mc.jsonl"}},
            "say": {"name": "say", "output_type": "generate_until", "prompt": "Say {word}:", "target": "{answer}",
                    "until": ["\n"], "max_new_tokens": 6, "metrics": ["exact_match"], "fewshot_split": None,
                    "data_files": {"test": "gen.jsonl"}},
            "text": {"name": "text", "output_type": "loglikelihood_rolling", "prompt": "{text}",
                     "metrics": ["word_perplexity", "byte_perplexity", "bits_per_byte"], "fewshot_split": None,
                     "data_files": {"test": "text.jsonl"}}}
    for name, spec in ours.items():
        (tmp / f"{name}.json").write_text(json.dumps(spec))
    return harness, tmp, lm_eval_dir


def test_lm_eval_tasks_agree_with_our_harness(setup):
    harness, tmp, lm_eval_dir = setup
    out = evaluate_tasks(HarnessLM(harness), ["local_capitals", "local_say", "local_text"],
                         include_path=str(lm_eval_dir), include_defaults=False, bootstrap_iters=0, log_samples=True)
    theirs = out["results"]
    ours = {name: evaluate(harness, load_task(str(tmp / f"{name}.json"))).metrics
            for name in ("capitals", "say", "text")}
    for metric in ("acc", "acc_norm"):
        assert theirs["local_capitals"][f"{metric},none"] == pytest.approx(ours["capitals"][metric], abs=1e-12)
    assert theirs["local_say"]["exact_match,none"] == ours["say"]["exact_match"] == 0.5
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert theirs["local_text"][f"{metric},none"] == pytest.approx(ours["text"][metric], rel=1e-9)
    # The scores themselves: each choice's log-likelihood as our harness computes it.
    samples = out["samples"]["local_capitals"]
    assert len(samples) == len(CAPITALS)
    for sample in samples:
        country, options, _ = CAPITALS[sample["doc_id"]]
        expected = harness.multiple_choice([(f"Q: What is the capital of {country}?\nA:", [" " + o for o in options])])
        assert [resp[0][0] for resp in sample["resps"]] == pytest.approx(list(expected[0]), abs=1e-5)


def test_requests_and_bad_input(setup):
    harness, _, lm_eval_dir = setup
    lm = HarnessLM(harness, max_gen_toks=4)

    class Request:  # the one attribute of lm-eval's Instance the LM reads
        def __init__(self, *args):
            self.args = args

    (text,) = lm.generate_until([Request("Say cat:", {"until": "\n"})])  # a bare string stop, max_gen_toks default
    assert text == harness.generate_until([GenerateRequest("Say cat:", ("\n",), 4)])[0].text
    with pytest.raises(ConfigError, match="generates greedily only"):
        lm.generate_until([Request("Say cat:", {"until": ["\n"], "do_sample": True, "temperature": 0.7})])
    # Beam search and unknown settings were answered greedily without a word.
    with pytest.raises(ConfigError, match=r"num_beams=4; HarnessLM generates greedily only"):
        lm.generate_until([Request("Say cat:", {"until": ["\n"], "num_beams": 4})])
    with pytest.raises(ConfigError, match=r"generation_kwargs \['num_beemz'\] are not supported"):
        lm.generate_until([Request("Say cat:", {"until": ["\n"], "num_beemz": 4})])
    greedy = {"until": ["\n"], "do_sample": False, "temperature": 0.0, "top_p": 0.9, "top_k": 5, "num_beams": 1}
    assert lm.generate_until([Request("Say cat:", greedy)]) == [text]  # filters a greedy decoder ignores
    # lm-eval's aliases of max_gen_toks set the length (max_gen_toks first), max_length is dropped as its hf model does.
    longer = lm.generate_until([Request("Say cat:", {"until": ["\n"], "max_new_tokens": 9, "max_length": 3})])
    assert longer == [harness.generate_until([GenerateRequest("Say cat:", ("\n",), 9)])[0].text]
    both = lm.generate_until([Request("Say cat:", {"until": ["\n"], "max_gen_toks": 4, "max_tokens": 9})])
    assert both == [text]
    with pytest.raises(ConfigError, match=r"task\(s\) \['local_capitalz'\] not found"):
        evaluate_tasks(lm, ["local_capitalz"], include_path=str(lm_eval_dir), include_defaults=False)
    from lm_eval.api.registry import get_model
    assert get_model("research") is HarnessLM
    with pytest.raises(ConfigError, match="exactly one of checkpoint=RUN_DIR or hf_dir=FOLDER"):
        HarnessLM.create_from_arg_string("batch_size=4")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['steps'\]"):
        HarnessLM.create_from_arg_string("checkpoint=/x,steps=3")


def test_sampling_is_read_as_lm_eval_reads_it(setup, monkeypatch):
    """do_sample: false with a temperature was refused although lm-eval 0.4.13 decodes it greedily
    (normalize_gen_kwargs sets temperature 0), and the refusal told the user to set the do_sample:
    false they had set. do_sample: true samples in lm-eval even at temperature 0 (its hf model
    hands transformers temperature 0, which refuses it); without do_sample, temperature > 0 samples."""
    harness = setup[0]
    lm = HarnessLM(harness, max_gen_toks=4)

    class Request:
        def __init__(self, *args):
            self.args = args

    def generate(**kwargs):
        return lm.generate_until([Request("Say cat:", {"until": ["\n"], **kwargs})])

    greedy = generate()
    assert generate(do_sample=False, temperature=0.7) == greedy
    assert generate(temperature=0.0) == generate(temperature=None) == greedy
    refused = [(dict(do_sample=True, temperature=0.0), r"sets do_sample: true, .* set do_sample: false in the"),
               (dict(do_sample=True, temperature=0.7), r"sets do_sample: true, .* set do_sample: false in the"),
               (dict(do_sample=True), r"sets do_sample: true"),
               (dict(temperature=0.7), r"sets temperature: 0.7 without do_sample, which lm-eval reads as sampling; "
                                       r".* add do_sample: false"),
               (dict(do_sample="yes"), r"do_sample: 'yes'; it must be true or false"),
               (dict(temperature="hot"), r"temperature: 'hot'; it must be a number")]
    for kwargs, message in refused:
        with pytest.raises(ConfigError, match=message) as error:
            generate(**kwargs)
        assert "\n" not in str(error.value)
        if kwargs.get("do_sample") is True:  # the fix named is do_sample alone, never the temperature 0 already set
            assert "temperature" not in str(error.value)
    # Every group of one call (lm-eval sends all its tasks' requests at once) is checked before
    # the first is generated: a max_gen_toks past max_length came after the others' work.
    monkeypatch.setattr(harness, "_generate", lambda *a: pytest.fail("generated before every group was checked"))
    late = {"until": ["\n"], "max_gen_toks": harness.max_length}
    with pytest.raises(ConfigError, match=rf"max_new_tokens={harness.max_length} leaves no room"):
        lm.generate_until([Request("Say cat:", {"until": ["\n"]}), Request("Say dog:", late)])


def test_non_integer_sizes_fail_in_one_line_before_loading():
    # lm-eval documents batch_size="auto" and passes it through; int("auto") was a bare ValueError.
    import lm_eval
    with pytest.raises(ConfigError, match=r"batch_size='auto': .* give an integer"):
        lm_eval.simple_evaluate(model="research", model_args="hf_dir=/nowhere", tasks=["none"], batch_size="auto")
    with pytest.raises(ConfigError, match=r"batch_size='auto:4': .* give an integer"):
        HarnessLM.create_from_arg_string("hf_dir=/nowhere,batch_size=auto:4")
    with pytest.raises(ConfigError, match=r"max_length='long' must be a positive integer"):
        HarnessLM.create_from_arg_string("hf_dir=/nowhere,max_length=long")


def test_importing_the_adapter_keeps_lm_evals_own_models():
    # Registering "research" once left lm-eval's registry with that name alone, so model="hf"
    # failed in any process that had imported the adapter.
    import subprocess
    import sys
    code = ("import research.evaluation.lm_eval_adapter, lm_eval.api.registry as r; "
            "print(r.get_model('hf').__name__, r.get_model('research').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["HFLM", "HarnessLM"]
