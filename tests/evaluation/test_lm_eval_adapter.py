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
    with pytest.raises(ConfigError, match=rf"generate_until request: max_gen_toks={harness.max_length} leaves no room"):
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


def test_fewshot_prompts_are_lm_evals_own_with_its_default_seeds(setup, tmp_path):
    """evaluate_tasks seeded lm-eval's few-shot sampler (and random / numpy / torch) with 0 where
    simple_evaluate's defaults are 0 / 1234 / 1234 / 1234, so `lm_eval --model hf` on the same
    task drew other few-shot examples."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    harness = setup[0]
    countries = ["Oman", "Cuba", "Iraq", "Laos", "Chad", "Fiji", "Mali", "Peru", "Togo", "Iran", "Niue", "Guam"]
    docs = [{"country": c, "options": [c + "x", c + "y"], "label": 0} for c in countries]
    _write_jsonl(tmp_path / "test.jsonl", docs[:4])
    _write_jsonl(tmp_path / "train.jsonl", docs[4:])
    yaml_dir = tmp_path / "yaml"
    yaml_dir.mkdir()
    _yaml(yaml_dir / "shots.yaml", f"""
        task: local_shots
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp_path / 'test.jsonl'}
            train: {tmp_path / 'train.jsonl'}
        test_split: test
        fewshot_split: train
        output_type: multiple_choice
        doc_to_text: "Q: capital of {{{{country}}}}?\\nA:"
        doc_to_target: "{{{{label}}}}"
        doc_to_choice: "{{{{options}}}}"
        num_fewshot: 3
        metric_list:
          - metric: acc
        """)
    lm = HarnessLM(harness)
    options = dict(limit=4, log_samples=True, bootstrap_iters=0)
    theirs = lm_eval.simple_evaluate(model=lm, tasks=["local_shots"], **options,
                                     task_manager=TaskManager(include_path=str(yaml_dir), include_defaults=False))
    ours = evaluate_tasks(lm, ["local_shots"], include_path=str(yaml_dir), include_defaults=False, **options)

    def contexts(out):
        return [s["arguments"][0][0] for s in sorted(out["samples"]["local_shots"], key=lambda s: s["doc_id"])]

    assert contexts(ours) == contexts(theirs)
    assert all(c.count("Q: capital of") == 4 for c in contexts(ours))  # 3 shots, then the query


def test_model_args_step_follows_the_step_flags_rules(monkeypatch):
    """step=best (which --step accepts) was a ValueError traceback from int(); step=1.5 became 1."""
    from research.training import checkpoint_loading

    asked = []

    class Loaded(Exception):
        pass

    def load_checkpoint(path, *, step=None, tokenizer=None):
        asked.append(step)
        raise Loaded

    monkeypatch.setattr(checkpoint_loading, "load_checkpoint", load_checkpoint)
    for arg, step in (("step=best", "best"), ("step=7", 7), ("tokenizer=char", None)):
        with pytest.raises(Loaded):
            HarnessLM.create_from_arg_string(f"checkpoint=/run,{arg}")
        assert asked.pop() == step
    for value in ("1.5", "last", "True"):
        with pytest.raises(ConfigError, match=rf"step={value!r}|step={value}") as error:
            HarnessLM.create_from_arg_string(f"checkpoint=/run,step={value}")
        assert "must be a step number or 'best'" in str(error.value) and "\n" not in str(error.value)
    assert not asked  # refused before any loading
    with pytest.raises(ConfigError, match=r"step=2.0 must be a step number"):
        HarnessLM.create_from_arg_obj({"checkpoint": "/run", "step": 2.0})


def test_an_empty_rolling_text_scores_as_lm_evals_hf_model(tmp_path):
    """lm-eval's HFLM scores an empty text log p 0 (no tokens, no windows); HarnessLM raised
    'rolling loglikelihood of an empty text', naming neither task nor document."""
    import string

    import torch
    import transformers
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from tokenizers import Tokenizer, decoders, models

    pieces = ["<pad>", "</s>"] + list(string.ascii_letters + string.digits + " .,\n")
    tokenizer = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>",
                                         pad_token="<pad>").save_pretrained(tmp_path)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=80, n_positions=64, n_embd=32, n_layer=1,
                                                         n_head=4)).save_pretrained(tmp_path)
    texts = ["The cat sat.", "", "hello world"]
    requests = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
                for i, t in enumerate(texts)]
    theirs = HFLM(pretrained=str(tmp_path), device="cpu", batch_size=1, dtype="float32").loglikelihood_rolling(requests)
    ours = HarnessLM.from_hf(str(tmp_path), batch_size=2).loglikelihood_rolling(requests)
    assert theirs[1] == ours[1] == 0.0
    assert ours == pytest.approx(theirs, abs=1e-3)


def test_max_gen_toks_serves_tasks_that_set_none_and_is_checked_before_scoring(setup, tmp_path, monkeypatch):
    """A generation task without generation_kwargs got lm-eval's own max_gen_toks 256 in place of
    HarnessLM's max_gen_toks=, so on a model with max_len 128 it failed, naming max_new_tokens,
    only after every earlier task's loglikelihood requests had been scored."""
    harness, tmp, _ = setup
    yaml_dir = tmp_path / "yaml"
    yaml_dir.mkdir()
    (yaml_dir / "capitals.yaml").write_text(capitals_task_yaml("local_capitals", tmp / "mc.jsonl"))
    for name, generation_kwargs in (("local_plain", ""), ("local_long", "generation_kwargs:\n  max_gen_toks: 500\n"),
                                    ("local_256", "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 256\n")):
        (yaml_dir / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp / 'gen.jsonl'}\n"
            f"test_split: test\noutput_type: generate_until\ndoc_to_text: 'Say {{{{word}}}}:'\n"
            f"doc_to_target: '{{{{answer}}}}'\n{generation_kwargs}metric_list:\n  - metric: exact_match\n")
    lengths = []
    generate = harness.generate_until
    monkeypatch.setattr(harness, "generate_until",
                        lambda requests: lengths.extend(r.max_new_tokens for r in requests) or generate(requests))

    def run(lm, *tasks):
        return evaluate_tasks(lm, ["local_capitals", *tasks], include_path=str(yaml_dir), include_defaults=False,
                              bootstrap_iters=0, limit=2)

    out = run(HarnessLM(harness, max_gen_toks=5), "local_plain")
    assert lengths == [5, 5] and "exact_match,none" in out["results"]["local_plain"]
    assert "acc,none" in out["results"]["local_capitals"]
    # A length that leaves no prompt room is refused before any scoring, with the fix for where it was set.
    monkeypatch.setattr(harness, "loglikelihood", lambda *a: pytest.fail("scored before the length was checked"))
    refused = [((HarnessLM(harness), "local_plain"),
                r"lm-eval task 'local_plain': max_gen_toks=256 leaves no room for a prompt in the model's "
                r"max_length=128; pass max_gen_toks= at most 127 \(HarnessLM"),
               ((HarnessLM(harness, max_gen_toks=5), "local_long"),
                r"lm-eval task 'local_long': max_gen_toks=500 .* set max_gen_toks to at most 127 in the task's "
                r"generation_kwargs"),
               ((HarnessLM(harness, max_gen_toks=5), "local_256"),  # the task's own 256 stays its own
                r"lm-eval task 'local_256': max_gen_toks=256 .* in the task's generation_kwargs")]
    for (lm, task), message in refused:
        with pytest.raises(ConfigError, match=message) as error:
            run(lm, task)
        assert "\n" not in str(error.value)


def test_an_output_type_the_model_cannot_answer_is_refused_before_any_scoring(setup, monkeypatch):
    """On a T5 a multiple-choice task then a rolling one scored every loglikelihood request of the
    first and only then raised: the adapter checks each task's output type against the harness
    (Harness.unsupported, what experiments.evaluate checks) before lm-eval scores anything."""
    harness, _, lm_eval_dir = setup
    why = "t5-tiny is an 'encoder_decoder' model; rolling (unconditional) loglikelihood needs a decoder-only model."
    monkeypatch.setattr(harness, "unsupported", lambda output_type: why if output_type == "loglikelihood_rolling"
                        else None)
    monkeypatch.setattr(harness, "loglikelihood", lambda *a: pytest.fail("scored before the refusal"))
    with pytest.raises(ConfigError, match=r"^lm-eval task 'local_text' \(loglikelihood_rolling\): t5-tiny is an "):
        evaluate_tasks(HarnessLM(harness), ["local_capitals", "local_text"], include_path=str(lm_eval_dir),
                       include_defaults=False, bootstrap_iters=0, limit=2)
