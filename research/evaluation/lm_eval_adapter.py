"""Our models as an lm-evaluation-harness `LM`, so any lm-eval task YAML runs on them.

    from research.evaluation.lm_eval_adapter import HarnessLM, evaluate_tasks
    lm = HarnessLM.from_checkpoint("/tmp/gpt_tiny")             # or HarnessLM.from_hf("hf/gpt2")
    results = evaluate_tasks(lm, ["my_task"], include_path="my_tasks/", num_fewshot=0)
    results["results"]["my_task"]["acc,none"]

Once this module is imported the model is also registered with lm-eval as "research", so
`lm_eval.simple_evaluate(model="research", model_args="checkpoint=/tmp/gpt_tiny,batch_size=8", ...)` works.

Every request type lm-eval issues is answered by research.evaluation.harness.Harness, the
same code our own tasks use: loglikelihood (context, continuation) -> (log p, is_greedy);
loglikelihood_rolling (text,) -> log p of the whole text in max_length windows;
generate_until (context, gen_kwargs) -> greedy text cut at the first stop string. lm-eval
owns the rest: task YAMLs, prompts, few-shot sampling, metrics and their aggregation.

Only greedy generation is offered (what lm-eval's generate_until means); a task asking for
sampling as lm-eval reads its generation_kwargs (do_sample: true, or temperature > 0 without
do_sample; do_sample: false is greedy at any temperature) is refused in one line rather than
answered greedily.
The batch size is a fixed integer: lm-eval's batch_size="auto" is refused in one line too.
max_gen_toks (default 256) is the length of a task that sets none, including one without
generation_kwargs, which lm-eval 0.4.13 fills with its own max_gen_toks 256 (told apart from a
task's own value in _lm_eval_filled); evaluate_tasks refuses, before any scoring, a generation
task whose length leaves no room for a prompt in the model's max_length.
lm-eval is imported only here, so the rest of the library does not need it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from research.optional_imports import import_optional

import_optional("lm_eval", "The lm-evaluation-harness adapter (research.evaluation.lm_eval_adapter)")
from lm_eval.api.model import LM  # noqa: E402  (after the one-line hint above when lm-eval is absent)
from lm_eval.api.registry import register_model  # noqa: E402
# lm-eval fills its registry of built-in models ("hf", "vllm", ...) from lm_eval.models only
# while the registry is empty: registering "research" first would hide them all in this process.
import lm_eval.models  # noqa: E402,F401

try:  # an lm-eval without it filled no max_gen_toks into a task without generation_kwargs
    from lm_eval.defaults import default_gen_kwargs as _lm_eval_default_gen_kwargs  # noqa: E402
except ImportError:
    _lm_eval_default_gen_kwargs = None

from research.evaluation.harness import Harness
from research.evaluation.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest
from research.models.config import ConfigError

if TYPE_CHECKING:
    from research.training.checkpoint_loading import Step

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM default for generate_until


@register_model("research")  # lm_eval.simple_evaluate(model="research", model_args="checkpoint=DIR") once imported
class HarnessLM(LM):
    """An lm-eval LM backed by a Harness (a zoo model, its params and a text tokenizer)."""

    def __init__(self, harness: Harness, *, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS):
        super().__init__()
        if max_gen_toks < 1:
            raise ConfigError(f"max_gen_toks={max_gen_toks} must be >= 1.")
        self.harness = harness
        self.max_gen_toks = max_gen_toks

    @classmethod
    def from_loaded(cls, loaded: Any, *, batch_size: int = 16, max_length: int | None = None,
                    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS) -> "HarnessLM":
        """From a research.training.checkpoint_loading.LoadedModel."""
        return cls(Harness(loaded.model, loaded.params, loaded.tokenizer, batch_size=batch_size,
                           max_length=max_length, stop_ids=getattr(loaded, "stop_ids", ()),
                           bidirectional_prompt=getattr(loaded, "bidirectional_prompt", False)),
                   max_gen_toks=max_gen_toks)

    @classmethod
    def from_checkpoint(cls, path: str, *, step: Step = None, tokenizer: str | None = None,
                        **kwargs: Any) -> "HarnessLM":
        from research.training.checkpoint_loading import load_checkpoint
        return cls.from_loaded(load_checkpoint(path, step=step, tokenizer=tokenizer), **kwargs)

    @classmethod
    def from_hf(cls, path: str, *, tokenizer: str | None = None, add_bos_token: bool | None = None,
                **kwargs: Any) -> "HarnessLM":
        """A Hugging Face folder, scored as lm-eval's `hf` model scores it: contexts get the
        tokenizer's own special tokens (Llama's <s>, T5's </s>); add_bos_token=False (lm-eval's
        option of that name) leaves them out."""
        from research.training.checkpoint_loading import load_hf
        return cls.from_loaded(load_hf(path, tokenizer=tokenizer, add_bos_token=add_bos_token), **kwargs)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "HarnessLM":
        """lm-eval's `--model_args`: "checkpoint=DIR[,step=N|best]" or "hf_dir=DIR[,add_bos_token=False]",
        plus tokenizer=, batch_size=, max_length=, max_gen_toks=."""
        from lm_eval.utils import simple_parse_args_string
        return cls._from_model_args(simple_parse_args_string(arg_string), additional_config, repr(arg_string))

    @classmethod
    def create_from_arg_obj(cls, arg_dict: Mapping[str, Any], additional_config: dict | None = None) -> "HarnessLM":
        """simple_evaluate(model="research", model_args={...}): the keys of create_from_arg_string
        as a dict. lm-eval's default passes the dict to the constructor, which takes a Harness."""
        if not isinstance(arg_dict, Mapping):
            raise ConfigError(f"model_args={arg_dict!r} must be a dict or a 'key=value,...' string, "
                              "e.g. {'hf_dir': FOLDER}.")
        return cls._from_model_args(dict(arg_dict), additional_config, repr(dict(arg_dict)))

    @classmethod
    def _from_model_args(cls, model_args: dict[str, Any], additional_config: dict | None,
                         arg_string: str) -> "HarnessLM":
        # arg_string: the model_args as the user wrote them, for the error lines.
        args = {**model_args,
                **{k: v for k, v in (additional_config or {}).items() if v is not None and k == "batch_size"}}
        checkpoint, hf_dir = args.pop("checkpoint", None), args.pop("hf_dir", None)
        if (checkpoint is None) == (hf_dir is None):
            raise ConfigError(f"model_args={arg_string}: give exactly one of checkpoint=RUN_DIR or hf_dir=FOLDER.")
        known = {"step", "tokenizer", "batch_size", "max_length", "max_gen_toks", "add_bos_token"}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"model_args={arg_string}: unknown key(s) {unknown}; known: {sorted(known)}.")
        options = {k: _integer(k, args[k]) for k in ("batch_size", "max_length", "max_gen_toks")
                   if args.get(k) is not None}
        add_bos_token = args.pop("add_bos_token", None)
        if add_bos_token is not None and not isinstance(add_bos_token, bool):
            raise ConfigError(f"model_args: add_bos_token={add_bos_token!r} must be True or False.")
        if checkpoint is not None:
            if add_bos_token is not None:
                raise ConfigError("model_args: add_bos_token= applies to hf_dir= (a Hugging Face tokenizer); "
                                  "leave it out for checkpoint=.")
            return cls.from_checkpoint(str(checkpoint), step=_step(args.get("step"), arg_string),
                                       tokenizer=args.get("tokenizer"), **options)
        if "step" in args:
            raise ConfigError("model_args: step= selects a checkpoint step; it does not apply to hf_dir=.")
        return cls.from_hf(str(hf_dir), tokenizer=args.get("tokenizer"), add_bos_token=add_bos_token, **options)

    # --- the three request types --------------------------------------------------------

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        results = self.harness.loglikelihood([LoglikelihoodRequest(*request.args) for request in requests])
        return [(r.log_prob, r.is_greedy) for r in results]

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[float]:
        results = self.harness.loglikelihood_rolling([RollingRequest(request.args[0]) for request in requests])
        return [r.log_prob for r in results]

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        # Every request is converted (and checked) before the harness generates any.
        converted = [GenerateRequest(request.args[0], **self.generation_options(
            request.args[1], getattr(request, "task_name", None))) for request in requests]
        return [r.text for r in self.harness.generate_until(converted)]

    def generation_options(self, gen_kwargs: Mapping[str, Any] | None, task: str | None = None) -> dict[str, Any]:
        """GenerateRequest's until and max_new_tokens for a generate_until request's gen_kwargs (of
        lm-eval task `task`), or a one-line ConfigError naming the task: sampling, beams, unknown
        settings, or a length that leaves no room for a prompt in the model's max_length."""
        where = f"lm-eval task {task!r}" if task else "a generate_until request"
        gen_kwargs = dict(gen_kwargs or {})
        own_length = not _lm_eval_filled(gen_kwargs)
        try:
            options = self._generation_options(gen_kwargs, own_length)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        length, room = options["max_new_tokens"], self.harness.max_length - 1
        # As Harness.generate_until measures it: only a decoder's prompt shares max_length with its answer.
        if self.harness.config.family == "decoder" and length > room:
            fix = (f"set max_gen_toks to at most {room} in the task's generation_kwargs" if own_length else
                   f"pass max_gen_toks= at most {room} (HarnessLM(..., max_gen_toks=N) or model_args "
                   "max_gen_toks=N), the length of a task that sets none")
            raise ConfigError(f"{where}: max_gen_toks={length} leaves no room for a prompt in the model's "
                              f"max_length={self.harness.max_length}; {fix}.")
        return options

    def _generation_options(self, gen_kwargs: dict[str, Any], own_length: bool) -> dict[str, Any]:
        until = gen_kwargs.pop("until", None)
        until = () if until is None else (until,) if isinstance(until, str) else tuple(until)
        # lm-eval 0.4.13 reads the length under these names, first found first (normalize_gen_kwargs),
        # and its hf model drops max_length.
        lengths = [gen_kwargs.pop(k) for k in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
                   if k in gen_kwargs]
        gen_kwargs.pop("max_length", None)
        # A max_gen_toks of None sets no length (int(None) was a TypeError traceback).
        own = own_length and lengths and lengths[0] is not None
        max_new_tokens = int(lengths[0]) if own else self.max_gen_toks
        self._check_greedy(gen_kwargs.pop("do_sample", None), gen_kwargs.pop("temperature", None))
        # Greedy decoding ignores the sampling filters, as transformers' generate does without do_sample.
        for key in ("top_k", "top_p"):
            gen_kwargs.pop(key, None)
        beams = gen_kwargs.pop("num_beams", 1)
        if beams not in (None, 1, "1"):
            raise ConfigError(f"the task asks for num_beams={beams!r}; HarnessLM generates greedily only (it once "
                              "answered such tasks greedily without a word): set generation_kwargs num_beams: 1.")
        if gen_kwargs:  # lm-eval's hf model passes the rest to generate; answered without them, a task would differ
            raise ConfigError(f"the task's generation_kwargs {sorted(gen_kwargs)} are not supported by HarnessLM "
                              "(until, max_gen_toks or its aliases, do_sample: false, temperature: 0, num_beams: 1 "
                              "are); remove them.")
        return {"until": until, "max_new_tokens": max_new_tokens}

    @staticmethod
    def _check_greedy(do_sample: Any, temperature: Any) -> None:
        """A one-line ConfigError unless lm-eval 0.4.13 reads these as greedy decoding. Its
        normalize_gen_kwargs: do_sample false -> greedy, temperature set to 0 whatever it was;
        do_sample absent -> sampling exactly when temperature > 0; do_sample true -> sampling,
        even at temperature 0 (its hf model then passes temperature 0 to transformers, which
        refuses it), so that is refused here too."""
        if do_sample is True:
            raise ConfigError("the task sets do_sample: true, which asks lm-eval to sample; HarnessLM generates "
                              "greedily only: set do_sample: false in the task's generation_kwargs.")
        if do_sample is not None and not isinstance(do_sample, bool):
            raise ConfigError(f"the task sets do_sample: {do_sample!r}; it must be true or false (HarnessLM "
                              "generates greedily only: false).")
        if do_sample is False:
            return  # lm-eval decodes greedily whatever the temperature says
        try:
            value = float(0.0 if temperature is None else temperature)
        except (TypeError, ValueError):
            raise ConfigError(f"the task sets temperature: {temperature!r}; it must be a number (0 for greedy "
                              "decoding).") from None
        if value > 0:
            raise ConfigError(f"the task sets temperature: {temperature!r} without do_sample, which lm-eval reads "
                              "as sampling; HarnessLM generates greedily only: add do_sample: false to the task's "
                              "generation_kwargs (or set temperature: 0).")


def _lm_eval_filled(gen_kwargs: Mapping[str, Any]) -> bool:
    """Whether gen_kwargs are lm-eval's own fill-in for a generate_until task without
    generation_kwargs, whose max_gen_toks is then no choice of the task's. lm-eval 0.4.13's
    TaskConfig gives such a task default_gen_kwargs(fewshot_delimiter): {temperature: 0.0,
    do_sample: False, max_gen_toks: 256, until: [...]}, keys in that order; a task's own
    generation_kwargs keep its YAML's order (until appended when missing), so only one that
    spells out those four values in that order reads as the fill-in. simple_evaluate's
    gen_kwargs= update the same dict: a max_gen_toks set there makes it the task's own."""
    if _lm_eval_default_gen_kwargs is None:
        return False
    return list(gen_kwargs.items()) == list(_lm_eval_default_gen_kwargs(gen_kwargs.get("until")).items())


def _integer(key: str, value: Any) -> int:
    """A model_args / lm-eval option that must be an integer, or a one-line ConfigError."""
    if isinstance(value, str) and key == "batch_size" and value.startswith("auto"):
        # lm-eval's "auto" probes the largest batch that fits by running the model; the
        # harness compiles one kernel per batch shape, so it takes a fixed size instead.
        raise ConfigError(f"batch_size={value!r}: the research model does not pick its batch size automatically; "
                          "give an integer, e.g. --batch_size 16.")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise ConfigError(f"{key}={value!r} must be a positive integer, e.g. {key}=16.")
    return int(value)


def _step(value: Any, arg_string: str) -> Step:
    """model_args' step=, read by the CLI's --step rules (parse_step): a step number, 'best' or
    absent (the latest). int() of lm-eval's parsed value failed on 'best' in a ValueError
    traceback and turned step=1.5 into step 1 without a word."""
    from research.training.checkpoint_loading import BEST, parse_step
    if value is None:
        return None
    try:  # str first: lm-eval hands 1.5 over as a float, which int() would truncate
        return parse_step(str(value))
    except ConfigError:
        raise ConfigError(f"model_args={arg_string}: step={value!r} must be a step number or {BEST!r} (the kept "
                          "step with the lowest eval loss); leave it out for the latest.") from None


def evaluate_tasks(lm: HarnessLM, tasks: Sequence[str], *, include_path: str | None = None,
                   include_defaults: bool = True, num_fewshot: int | None = None, limit: int | None = None,
                   log_samples: bool = False, bootstrap_iters: int = 100_000, random_seed: int = 0,
                   numpy_random_seed: int = 1234, torch_random_seed: int = 1234,
                   fewshot_random_seed: int = 1234) -> dict[str, Any]:
    """lm_eval.simple_evaluate on `lm` for task names (lm-eval's own, or those of the YAML files
    under include_path; include_defaults=False skips indexing lm-eval's thousands of tasks).
    The result dict is lm-eval's own (results, samples when log_samples, configs, ...);
    bootstrap_iters=0 skips the bootstrap standard errors. The seeds default to
    simple_evaluate's own (0, 1234, 1234, 1234), so `lm_eval --model hf` on the same task draws
    the same few-shot examples (seeding all four with 0 drew others)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if not include_defaults and not include_path:
        raise ConfigError("include_defaults=False needs include_path=DIR holding your task YAMLs.")
    manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    missing = [name for name in tasks if name not in manager.all_tasks]
    if missing:
        where = f" or in {include_path!r}" if include_path else " (pass include_path=DIR with your task YAMLs)"
        raise ConfigError(f"lm-eval task(s) {missing} not found among lm-eval's tasks{where}.")
    return lm_eval.simple_evaluate(model=lm, tasks=_checked_tasks(lm, manager, tasks), task_manager=manager,
                                   num_fewshot=num_fewshot,
                                   limit=limit, log_samples=log_samples, bootstrap_iters=bootstrap_iters,
                                   random_seed=random_seed, numpy_random_seed=numpy_random_seed,
                                   torch_random_seed=torch_random_seed, fewshot_random_seed=fewshot_random_seed)


def _checked_tasks(lm: HarnessLM, manager: Any, names: Sequence[str]) -> list[Any]:
    """The tasks to evaluate, each checked for an output type the model answers (Harness.unsupported)
    and each generate_until task's generation_kwargs as lm will read them: lm-eval runs every
    task's loglikelihood requests before any generation, so a length past max_length was refused
    only after those were scored. The built tasks and groups are
    handed on in place of their names, so lm-eval does not build them again; a tag (several
    tasks under one name) is handed on by name. An lm-eval without TaskManager.load (before
    0.4.13) gets the names, checked only at generation."""
    if not hasattr(manager, "load"):
        return list(names)
    loaded = manager.load(list(names))
    for name, task in loaded["tasks"].items():
        # An output type the model cannot answer (T5's rolling loglikelihood) was refused only once
        # lm-eval reached it, after every loglikelihood request of the other tasks was scored.
        if (why := lm.harness.unsupported(task.OUTPUT_TYPE)) is not None:
            raise ConfigError(f"lm-eval task {name!r} ({task.OUTPUT_TYPE}): {why}")
        if task.OUTPUT_TYPE == "generate_until":
            lm.generation_options(task.config.generation_kwargs, name)
    built = [loaded["groups"][name] if name in loaded["groups"] else loaded["tasks"].get(name) for name in names]
    return list(names) if any(item is None for item in built) else built
