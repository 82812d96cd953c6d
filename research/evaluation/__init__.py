"""Few-shot evaluation: an lm-evaluation-harness style harness, tasks as data, metrics.

    from research.evaluation import CharTokenizer, Harness, evaluate, get_task
    harness = Harness(model, params, tokenizer, batch_size=16)
    result = evaluate(harness, get_task("addition", digits=3, num_fewshot=4), limit=200)
    result.metrics  # exact_match, token_accuracy, token_edit_distance, target_log_prob, brier_score

Pieces (one concern per module):
    requests.py           request / result types, lm-eval tokenization and rolling windows
    scoring.py            batched jitted kernels; shapes bucketed to powers of two
    harness.py            Harness: loglikelihood, loglikelihood_rolling, generate_until,
                          multiple_choice, for decoder, encoder-decoder and encoder models
    task_spec.py          TaskSpec (declarative), Task, JSONL / task-file loading
    fewshot.py            few-shot prompts drawn with a seed from a separate split
    evaluator.py          evaluate(harness, task) -> TaskResult
    metrics.py            per-example metrics and their aggregation
    emergence_metrics.py  BIG-bench linearity / breakthroughness, in-context-learning score
    tasks/                generated ability tasks with difficulty knobs
    tokenizer.py          the tokenizer Protocol, and CharTokenizer

Around the harness, for experiments (experiments/evaluate.py, experiments/emergence.py; models to
evaluate are loaded by research.training.checkpoint_loading):
    tokenizer_loading.py   "char" / SentencePiece .model / Hugging Face tokenizer folder by name
    task_catalog.py        named task variants ("addition_3digit", "copying") for command lines
    suite.py               tasks x shot counts on one harness -> result rows, all checked up front
    task_corpus.py         tasks' training splits as training text, mixed with a corpus as JSONL
    results_table.py       rows -> JSON / CSV / printed table
    study_report.py        each metric across model sizes, with linearity and breakthroughness
    plots.py               metric curves (PNG)

Adding a task
-------------
1. Write the documents as JSONL, one JSON object per line, e.g. capitals_test.jsonl:

       {"country": "France", "answer": "Paris", "options": ["Paris", "Rome", "Lima"]}

   and, for few-shot prompts, a second file of solved examples (capitals_train.jsonl).
2. Write a task file capitals.json next to them (templates are Python format strings
   over the documents' fields; output_type is one of generate_until, multiple_choice,
   loglikelihood, loglikelihood_rolling; metrics default to all of that type's):

       {"name": "capitals", "output_type": "multiple_choice",
        "prompt": "Q: What is the capital of {country}?\\nA:", "target": "{answer}",
        "choices": "options", "metrics": ["acc", "acc_norm"], "num_fewshot": 2,
        "data_files": {"test": "capitals_test.jsonl", "train": "capitals_train.jsonl"}}

3. `task = load_task("capitals.json")`, then `evaluate(harness, task)`.

Or in Python: `task_from_jsonl(TaskSpec(...), {"test": path, "train": path})`, or, for a
generated task, `make_task(spec, {"test": [dict, ...], "train": [...]})`. Every template
is rendered on every document when the task is built, so a malformed line or a missing
field fails before any model runs, naming the file and line.

Context length: a prompt longer than the model's context is truncated from the left (the
text nearest the answer is kept, as lm-eval does) with a warning counting the truncated
prompts; a target that alone exceeds the context is an error.
"""
from research.evaluation.emergence_metrics import (breakthroughness, in_context_learning_score, linearity,
                                                   total_improvement)
from research.evaluation.evaluator import TaskResult, evaluate, token_losses
from research.evaluation.fewshot import fewshot_context
from research.evaluation.harness import Harness
from research.evaluation.requests import (GenerateRequest, GenerateResult, LoglikelihoodRequest, LoglikelihoodResult,
                                          RollingRequest, RollingResult)
from research.evaluation.task_spec import Doc, Task, TaskError, TaskSpec, load_task, make_task, task_from_jsonl
from research.evaluation.tasks import get_task, task_names
from research.evaluation.tokenizer import CharTokenizer, TextTokenizer

__all__ = ["CharTokenizer", "Doc", "GenerateRequest", "GenerateResult", "Harness", "LoglikelihoodRequest",
           "LoglikelihoodResult", "RollingRequest", "RollingResult", "Task", "TaskError", "TaskResult", "TaskSpec",
           "TextTokenizer", "breakthroughness", "evaluate", "fewshot_context", "get_task", "in_context_learning_score",
           "linearity", "load_task", "make_task", "task_from_jsonl", "task_names", "token_losses",
           "total_improvement"]
