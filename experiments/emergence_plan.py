"""The emergence study's plan and data: the ladder's model configs, every task, and the
training mixture with its tokenizer, built and checked before any compilation
(experiments/emergence.py runs the study)."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from typing import Any, Callable

import ml_collections

from research.atomic_files import write_text_atomically
from research.models.config import GRADIENT_ONLY_FIELDS, ConfigError

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """Everything the study will do, built and checked before any compilation."""

    sizes: dict[str, Any]  # size name -> ModelConfig
    eval_entries: list  # research.evaluation.suite.SuiteEntry, evaluated at every checkpoint
    final_entries: list  # evaluated at the final checkpoint only (the many-item mirage tasks)
    train_tasks: dict[str, Any]  # task name -> Task whose "train" split holds the training problems
    fingerprint: str  # of everything that decides evaluation results


def plan_study(config: ml_collections.ConfigDict) -> StudyPlan:
    """Build the ladder's model configs and every task; ConfigError / TaskError on bad input."""
    from research.evaluation.suite import plan_suite
    from research.evaluation.task_catalog import catalog_names, catalog_task, is_task_file
    from research.evaluation.task_spec import make_task
    from research.models import get_config

    sizes = list(config.sizes)
    if len(sizes) < 2 or len(set(sizes)) != len(sizes):
        raise ConfigError(f"sizes={sizes} must name at least 2 distinct presets (a ladder).")
    ladder = dict(config.get("ladder", None) or {})
    for name, fields in ladder.items():
        if "preset" not in fields:
            raise ConfigError(f"ladder[{name!r}]={dict(fields)} must name the preset it changes, e.g. "
                              "dict(preset='scale-1e5', d_model=32, num_heads=4, d_ff=128).")
    models = {}
    for size in sizes:
        fields = size_model_fields(config, size)
        models[size] = get_config(fields.pop("preset"), **fields)
    if models[sizes[0]].family != "decoder" or any(m.family != models[sizes[0]].family for m in models.values()):
        raise ConfigError(f"sizes={sizes} must all be decoder presets; the study trains causal LMs.")
    _check_distinct_sizes(models)
    if float(config.get("lr_reference_width", 0) or 0) < 0:
        raise ConfigError(f"lr_reference_width={config.lr_reference_width} must be >= 0 (0: one learning rate "
                          "for every size).")
    if float(config.get("lr_scale_floor", 0) or 0) < 0:
        raise ConfigError(f"lr_scale_floor={config.lr_scale_floor} must be >= 0 (0: no floor; 1: no size trains "
                          "below opt.learning_rate).")
    mixture = config.mixture
    if not 0.0 <= mixture.corpus_fraction < 1.0:
        raise ConfigError(f"mixture.corpus_fraction={mixture.corpus_fraction} must be in [0, 1).")
    if not mixture.tasks or any(int(n) < 1 for n in mixture.tasks.values()):
        raise ConfigError(f"mixture.tasks={dict(mixture.tasks)} must map task names to problem counts >= 1.")
    known = set(catalog_names())
    for name in mixture.tasks:  # a misspelt training task is named as such, before the packing below names it
        if not is_task_file(name) and name not in known:
            catalog_task(name)  # raises the catalog's one line, with the nearest names
    pairs = {"mixture.examples_per_document": mixture.examples_per_document}
    for name, pair in dict(mixture.get("examples_per_document_by_task", None) or {}).items():
        if name not in mixture.tasks:
            raise ConfigError(f"mixture.examples_per_document_by_task names {name!r}, which mixture.tasks lacks; "
                              f"use one of {sorted(mixture.tasks)}.")
        pairs[f"mixture.examples_per_document_by_task[{name!r}]"] = pair
    for field, pair in pairs.items():  # (a one-number tuple failed after the plan, in the data's preparation)
        pair = tuple(pair) if isinstance(pair, (tuple, list)) else (pair,)
        if len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) for n in pair) or \
                not 1 <= pair[0] <= pair[1]:
            raise ConfigError(f"{field}={pair if len(pair) != 1 else pair[0]!r} must be (fewest, most) with "
                              "1 <= fewest <= most.")

    _check_training_and_evaluation(config, models)
    ev = config.eval
    cue = ev.cot_description
    eval_tasks = {name: _with_cue(catalog_task(name, num_test=ev.num_test, num_train=ev.num_train, seed=ev.seed),
                                  cue) for name in ev.tasks}
    # One generation budget for every task: the harness then compiles one decoding loop per
    # size, and shorter answers still stop at their newline.
    budget = max(t.spec.max_new_tokens for t in eval_tasks.values())
    eval_tasks = {n: make_task(t.spec.replace(max_new_tokens=budget), t.splits) for n, t in eval_tasks.items()}
    entries = plan_suite(list(ev.tasks), list(ev.shots), tasks=eval_tasks)
    final_names = list(ev.get("final_tasks", ()))
    final_entries = []
    if final_names:
        if int(ev.get("final_num_test", 0)) < MIN_ITEMS:
            raise ConfigError(f"eval.final_num_test={ev.get('final_num_test')} must be >= {MIN_ITEMS} when "
                              "eval.final_tasks is set: each curve's item bootstrap needs that many items per task "
                              "(e.g. 1000).")
        # With the cue too: a chain-of-thought task among them was prompted without the line that opens
        # its training documents and its every-checkpoint prompts, biasing the final rows against it.
        final_tasks = {name: _with_cue(catalog_task(name, num_test=ev.final_num_test, num_train=ev.num_train,
                                                    seed=ev.seed), cue) for name in final_names}
        longest = max(t.spec.max_new_tokens for t in final_tasks.values())
        final_tasks = {n: make_task(t.spec.replace(max_new_tokens=longest), t.splits) for n, t in final_tasks.items()}
        final_entries = plan_suite(final_names, list(ev.final_shots), tasks=final_tasks)
    _check_distinct_items(entries, "num_test")
    _check_distinct_items(final_entries, "final_num_test")
    _check_report(config, entries + final_entries)  # after the tasks: a misspelt task is named as such
    train_tasks = {name: _with_cue(catalog_task(name, num_test=0, num_train=int(count), seed=mixture.seed), cue)
                   for name, count in mixture.tasks.items()}
    # Evaluation runs the forward pass only: how gradients are computed cannot change a cached result.
    model = {k: v for k, v in config.model.to_dict().items() if k not in GRADIENT_ONLY_FIELDS}
    from research.evaluation.evaluator import METRICS_VERSION
    fields = {"eval": ev.to_dict(), "mixture": mixture.to_dict(), "tokenizer": tokenizer_settings(config),
              "model": model, "metrics_version": METRICS_VERSION}
    # Shots that leave out the query's answer too (unscramble, 2026-12-07): other prompts than before,
    # for the studies that have such entries only (the others keep their cached evaluations).
    filtered = sorted({e.name for e in entries + final_entries
                       if e.num_fewshot and e.task.spec.answer_identifies_problem})
    if filtered:
        fields = {**fields, "answer_filtered_shots": filtered}
    # Final chain-of-thought prompts that gained the cue on 2026-12-07: those studies evaluate again
    # (no preset has one: the others keep their cached evaluations).
    cued = sorted({e.name for e in final_entries if cue and e.task.spec.answer_prefix is not None})
    fingerprint = _digest({**fields, "final_prompts_cued": cued} if cued else fields)
    return StudyPlan(models, entries, final_entries, train_tasks, fingerprint)


# The fewest test items per task: every curve's item bootstrap and noise rule
# (emergence_metrics.curve_shape_with_noise) need 2; 1 failed the report after the whole study.
MIN_ITEMS = 2
# The share of repeated problems an evaluation may hold: 1000 items of 2-digit addition (8,100
# problems) repeat ~6%; 1000 of 1-digit addition (100 problems) repeat 90%.
MAX_REPEATED_ITEMS = 0.1


def _check_distinct_items(entries: list, field: str) -> None:
    """Refuse an evaluation whose test items are mostly repeats of a few problems: the item
    bootstrap takes its items as independent draws, so its intervals would be too narrow."""
    from research.evaluation.task_corpus import held_out_prompts

    for entry in entries:
        items = len(entry.task.docs(entry.task.spec.eval_split))
        distinct = len(held_out_prompts(entry.task))
        if distinct < (1.0 - MAX_REPEATED_ITEMS) * items:
            problems = _problems_behind(distinct, items)
            raise ConfigError(f"eval.{field}={items}: task {entry.name!r} has only {distinct} distinct problems among "
                              f"its {items} test items, and repeats make the item-bootstrap intervals too narrow; "
                              f"items are drawn with replacement from about {problems} problems, so lower eval.{field} "
                              f"to about {max(1, problems // 10)} or use a task with more problems.")


def _problems_behind(distinct: int, draws: int) -> int:
    """How many equally likely problems `draws` draws with replacement come from when `distinct`
    of them differ (E[distinct] = K (1 - (1 - 1/K)^draws), solved for K by bisection)."""
    low, high = float(distinct), float(distinct) * 1e6
    for _ in range(200):
        middle = (low + high) / 2
        if middle * (1 - (1 - 1 / middle) ** draws) < distinct:
            low = middle
        else:
            high = middle
    return round(high)


def _check_distinct_sizes(models: dict[str, Any]) -> None:
    """Every size a distinct non-embedding parameter count: the curves across sizes use it as
    their scale, and two models at one scale would fail the report after all the training
    (the ladder's d8-l2 and d8-l2h1 are one model: d_model // 8 = 1 head)."""
    from research.models import sizing

    seen: dict[int, str] = {}
    for size, model in models.items():
        count = sizing.param_counts(model).non_embedding
        if count in seen:
            raise ConfigError(f"sizes {seen[count]!r} and {size!r} have the same {count:,} non-embedding "
                              "parameters, the scale of every curve across sizes; keep one of them.")
        seen[count] = size


def _check_report(config: ml_collections.ConfigDict, entries: list) -> None:
    """report.metrics / plot_metrics name metrics the study's tasks (`entries`) compute, at least
    one to plot, report.mirage_sizes names trained sizes, and each report.transition_task is
    evaluated at every checkpoint (eval.tasks): a misspelt name once gave an empty report after
    the whole study had run, and no metric to plot a traceback from the plots instead of report.md."""
    from research.evaluation.metrics import METRICS_BY_OUTPUT_TYPE
    from research.evaluation.suite import computed_metrics

    report = config.get("report", None)
    if report is None:
        return
    known = tuple(dict.fromkeys(m for names in METRICS_BY_OUTPUT_TYPE.values() for m in names))
    computed = computed_metrics(entries)
    for field in ("metrics", "plot_metrics"):
        names = report.get(field, ()) or ()
        if isinstance(names, str):
            raise ConfigError(f"report.{field}={names!r} must be a tuple of metric names, e.g. ({names!r},).")
        names = tuple(names)
        unknown = [m for m in names if m not in known]
        if unknown:
            near = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"report.{field} names unknown metric(s) {unknown}; {hint}known: {known}.")
        uncomputed = [m for m in names if m not in computed]
        if uncomputed:
            raise ConfigError(f"report.{field} names {uncomputed}, which the study's tasks do not compute; name "
                              f"metrics they compute: {computed}.")
        if field == "plot_metrics" and not names:
            raise ConfigError(f"report.plot_metrics=() names no metric to plot; name at least one the study's tasks "
                              f"compute, e.g. ({computed[0]!r},).")
    mirage_sizes = report.get("mirage_sizes", ()) or ()
    unknown = [s for s in mirage_sizes if s not in tuple(config.sizes)]
    if len(set(mirage_sizes)) == 1:
        raise ConfigError(f"report.mirage_sizes={tuple(mirage_sizes)} names one size; a shape across sizes needs "
                          "at least 2 (4 or more to mean anything), or leave it empty for every size.")
    if unknown:
        raise ConfigError(f"report.mirage_sizes names {unknown}, which sizes={tuple(config.sizes)} does not train; "
                          "name sizes from `sizes` (or leave it empty for every size).")
    tracked = report.get("transition_task", None) or ()
    tracked = [tracked] if isinstance(tracked, str) else list(tracked)
    missing = [t for t in tracked if t not in tuple(config.eval.tasks)]
    if missing:
        raise ConfigError(f"report.transition_task names {missing}, which eval.tasks={tuple(config.eval.tasks)} does "
                          "not evaluate at every checkpoint; add them to eval.tasks or drop them.")


def _check_training_and_evaluation(config: ml_collections.ConfigDict, models: dict[str, Any]) -> None:
    """The numbers that otherwise fail only inside a worker, after the data is written or a
    whole size has trained (eval.batch_size is read when the first checkpoint is evaluated)."""
    from research.training.checkpointing import CheckpointConfig
    from research.training.train_config import TrainConfig
    from research.training.optimizers import OptimizerConfig

    train = TrainConfig(**config.train.to_dict())  # each ConfigError names its train.<field>
    OptimizerConfig(total_steps=train.num_steps, **config.opt.to_dict())
    CheckpointConfig(**config.checkpoint.to_dict())
    for size, model in models.items():
        if train.seq_len > model.max_len:
            raise ConfigError(f"train.seq_len={train.seq_len} exceeds size {size!r}'s max_len={model.max_len}; "
                              f"lower train.seq_len or raise model.max_len.")
    ev = config.eval
    for field in ("batch_size", "min_bucket"):
        if int(ev.get(field, 1)) < 1:
            raise ConfigError(f"eval.{field}={ev.get(field)} must be >= 1.")
    if int(ev.get("num_test", MIN_ITEMS)) < MIN_ITEMS:
        raise ConfigError(f"eval.num_test={ev.get('num_test')} must be >= {MIN_ITEMS}: each curve's item bootstrap "
                          "needs that many items per task (e.g. 400).")
    if int(ev.get("num_train", 0)) < 0:
        raise ConfigError(f"eval.num_train={ev.num_train} must be >= 0 (the few-shot examples' pool per task).")
    if not tuple(ev.tasks):
        raise ConfigError("eval.tasks is empty: name the tasks evaluated at every checkpoint, e.g. "
                          "--config.eval.tasks='(\"copying\",)'.")


def _with_cue(task: Any, cue: str) -> Any:
    """Chain-of-thought tasks open with `cue`, so zero-shot prompts say which format is wanted."""
    from research.evaluation.task_spec import make_task
    if task.spec.answer_prefix is None or not cue:
        return task
    return make_task(task.spec.replace(description=cue), task.splits)


def _digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_data(config: ml_collections.ConfigDict, plan: StudyPlan, workdir: str, log: Log) -> dict[str, Any]:
    """Write the mixture (once) and train its tokenizer (once); returns the runs' data config."""
    from research import data
    from research.data.sources import TextFileSource, stdlib_files
    from research.evaluation.task_corpus import solved_documents, take_chars, training_docs, write_mixture

    data_dir = os.path.join(workdir, "data")
    mixture_path = os.path.join(data_dir, "mixture.jsonl")
    manifest_path = os.path.join(data_dir, "manifest.json")
    held_out = [entry.task for entry in plan.eval_entries + plan.final_entries]
    wanted, uncut, legacy = mixture_fingerprints(config, plan)
    stored = read_json(manifest_path).get("fingerprint")
    runs_dir = os.path.join(workdir, "runs")
    has_runs = os.path.isdir(runs_dir) and bool(os.listdir(runs_dir))
    if stored == legacy != uncut and os.path.isfile(mixture_path):
        # A manifest written before 2026-12-05 (its fingerprint held every held-out prompt), by
        # these very settings: the same documents; record the fingerprint of that day's form.
        write_json(manifest_path, {**read_json(manifest_path), "fingerprint": uncut})
        stored = uncut
    if stored == uncut != wanted and os.path.isfile(mixture_path) and has_runs:
        # Its runs trained on documents not cut to the window: the study goes on with them, so its
        # sizes stay comparable; one without runs yet gets documents that fit.
        log(f"warning: {mixture_path} was written before 2026-12-07: its task documents can be longer than "
            f"train.seq_len={config.train.seq_len} tokens (cpu_tiny: 8-10% of its addition problems cut by a "
            "window boundary), and unscramble's hold the words its evaluation asks for; this study goes on with "
            "it, a new --workdir gets documents that fit.")
        stored = wanted
    if stored != wanted or not os.path.isfile(mixture_path):
        if has_runs:
            raise ConfigError(f"{workdir!r} holds runs trained on another mixture, tokenizer or held-out set; "
                              "use a new --workdir (or delete its runs/ and data/; a workdir made before "
                              "2026-12-05 also continues under the eval settings it was made with, e.g. cpu_tiny's "
                              "--config.eval.num_test=400).")
        mixture = config.mixture
        parts = {}
        for name, task in plan.train_tasks.items():
            docs, drawn = training_docs(task, "train", held_out), len(task.docs("train"))
            if len(docs) < 0.9 * drawn:  # (unscramble at 1000 test items kept 1556 of 8000, unsaid)
                log(f"{name}: {len(docs)} of its {drawn} training problems are left once the evaluation's problems "
                    "are held out; evaluate fewer items (eval.num_test) or draw more (mixture.tasks) for more.")
            parts[name] = solved_documents(task.spec, docs, examples_per_document=examples_per_document(mixture, name),
                                           seed=mixture.seed, max_chars=document_chars(config))
        task_chars = sum(len(t) for texts in parts.values() for t in texts)
        corpus_chars = int(task_chars * mixture.corpus_fraction / (1.0 - mixture.corpus_fraction))
        if corpus_chars:
            files = TextFileSource(stdlib_files("train"))
            parts = {"stdlib": take_chars((files[i] for i in range(len(files))), corpus_chars), **parts}
        chars = write_mixture(mixture_path, parts, seed=mixture.seed)
        write_json(manifest_path, {"fingerprint": wanted, "chars": chars})
        log(f"wrote {mixture_path}: " + ", ".join(f"{k} {v / 1e3:.0f}K chars" for k, v in chars.items()))
    files_config = dict(source="files", file_patterns=(mixture_path,), data_dir=os.path.join(workdir, "tfds"),
                        validation_fraction=0.02)
    tokenizer = data.build_tokenizer(data.DataConfig(**files_config, tokenizer=data.TokenizerConfig(
        **config.tokenizer.to_dict())), workdir)
    return {**files_config, "file_patterns": [mixture_path], "tokenizer": {"model_path": tokenizer.path}}


def tokenizer_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """config.tokenizer as the study's fingerprints digest it: the fields the presets gained later
    (TOKENIZER_ADDED_LATER) only when they differ from their defaults, so a study recorded before
    them keeps its fingerprint, and one with another model_type or normalization gets its own."""
    from experiments.configs.emergence import TOKENIZER_ADDED_LATER
    return {k: v for k, v in config.tokenizer.to_dict().items()
            if k not in TOKENIZER_ADDED_LATER or v != TOKENIZER_ADDED_LATER[k]}


def document_chars(config: ml_collections.ConfigDict) -> int:
    """The longest task document, in characters, that one training window holds whole: at most one
    token per character, plus the tokenizer's dummy prefix and the eos (task_corpus.task_documents)."""
    return int(config.train.seq_len) - 2


def mixture_fingerprints(config: ml_collections.ConfigDict, plan: StudyPlan) -> tuple[str, str, str]:
    """(fingerprint, the same before 2026-12-07, the same before 2026-12-05) of what decides the
    training mixture: the mixture and tokenizer settings, the chain-of-thought cue, the longest
    document (document_chars) and the evaluation problems the training tasks would otherwise
    contain, which are left out of them. Only those: tracking more items or tasks at every
    checkpoint (more held-out copy prompts that no training document holds, the first 400 of the
    1000 final additions) keeps the mixture, and so the runs. Before 2026-12-07 documents were
    not cut to the window; before 2026-12-05 the form digested every held-out prompt, whether or
    not training drew it."""
    from research.evaluation.task_corpus import held_out_prompts, training_mask

    evaluated = [e.task for e in plan.eval_entries + plan.final_entries]
    held_out = set().union(*(held_out_prompts(t) for t in evaluated))
    excluded, by_prompt = set(), set()  # (since 2026-12-07 also unscramble's evaluation words; before, by prompt)
    for task in plan.train_tasks.values():
        prompts = task.prompts("train")
        excluded |= {p for p, keep in zip(prompts, training_mask(task, "train", evaluated)) if not keep}
        by_prompt |= held_out.intersection(prompts)
    settings = {"mixture": config.mixture.to_dict(), "tokenizer": tokenizer_settings(config),
                "cot_description": config.eval.cot_description}
    return (_digest({**settings, "excluded_from_training": _digest(sorted(excluded)),
                     "document_chars": document_chars(config)}),
            _digest({**settings, "excluded_from_training": _digest(sorted(by_prompt))}),
            _digest({**settings, "held_out": _digest(sorted(held_out))}))


def examples_per_document(mixture: ml_collections.ConfigDict, task: str) -> tuple[int, int]:
    """(fewest, most) problems per training document of `task`: its entry in
    mixture.examples_per_document_by_task, else mixture.examples_per_document."""
    by_task = dict(mixture.get("examples_per_document_by_task", None) or {})
    return tuple(int(n) for n in by_task.get(task, mixture.examples_per_document))


def read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, value: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text_atomically(path, json.dumps(value, indent=1))


def size_model_fields(config: ml_collections.ConfigDict, size: str) -> dict[str, Any]:
    """research.training's model fields of one size: {"preset": ..., overrides}. A size is a model
    preset, or a name in config.ladder ({name: dict(preset=..., d_model=..., ...)}: a preset with
    its shape changed, for widths the presets lack); config.model's overrides apply to both."""
    from research.models.presets import preset_names

    ladder = config.get("ladder", None) or {}
    if size not in ladder and size not in preset_names():
        near = difflib.get_close_matches(size, [*ladder, *preset_names()], n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(near)}? " if near else ""
        raise ConfigError(f"sizes names {size!r}, neither a config.ladder entry ({', '.join(ladder) or 'none'}) nor a "
                          f"model preset (scale-1e4 .. scale-1e9, ...); {hint}or add it to config.ladder as "
                          "dict(preset=..., d_model=..., num_heads=..., d_ff=...).")
    custom = dict(ladder.get(size, None) or {"preset": size})
    return {"preset": custom.pop("preset"), **config.model.to_dict(), **custom}
