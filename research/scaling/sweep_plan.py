"""Plan a scaling sweep: a model ladder and the training runs laid out over it.

A ladder is either zoo presets (research/models/presets.py) or models generated for target
non-embedding parameter counts at a fixed width/depth aspect (`scaling_ladder_config`).
Runs are laid out for one of the two designs of Hoffmann et al. 2022:

  "tokens"   Approach 1: every model trained for each of several token budgets, given as
             tokens per parameter (D = r N, `tokens_per_param`) or as token counts (`tokens`),
             each a separate run whose schedule spans its own length. `budgets` (FLOPs) are
             the IsoFLOP plan's and unused here: a preset's stay harmless under
             --config.sweep.plan=tokens.
  "isoflop"  Approach 2: for each FLOP budget C, the `models_per_budget` ladder models
             nearest the guessed optimum N* = sqrt(C / (6 r)) (r = `tokens_per_param_prior`,
             20 after Chinchilla), each trained on D = C / (6 N) tokens.

Token counts are whole optimizer steps: D = steps x batch_size x seq_len, the token
positions a run consumes (padding included; packing leaves little). C is reported both as
6 N D (N as chosen by `param_count`) and as the exact matmul count, sizing's train FLOPs per
token (attention and unembedding included) times D. Bad input fails here, before training.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping, Sequence

from research.models import sizing
from research.models.config import ConfigError, ModelConfig
from research.models.presets import LADDER_ASPECT, get_config, preset_names, scaling_ladder_config
from research.scaling.laws import FLOPS_PER_PARAM_TOKEN

PlanKind = Literal["tokens", "isoflop"]
ParamCount = Literal["non_embedding", "total"]
# Generated ladder models are this preset with their sizes overridden (GPT-2 style, as
# scaling_ladder_config builds them), so a run's config stays "preset + overrides".
LADDER_BASE_PRESET = "gpt2-tiny"
_LADDER_FIELDS = ("d_model", "num_layers", "num_heads", "d_ff", "vocab_size", "max_len", "position")


class SweepError(ConfigError):
    """A user-facing problem with a sweep declaration; one line naming the value and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepSpec:
    """What to run (config.sweep). Exactly one of `presets` / `non_embedding_params` is set."""

    presets: tuple[str, ...] = ()
    non_embedding_params: tuple[float, ...] = ()
    aspect: int = LADDER_ASPECT  # d_model per layer of generated models
    plan: PlanKind = "isoflop"
    budgets: tuple[float, ...] = ()  # isoflop: FLOPs, C = 6 N D
    models_per_budget: int = 5
    tokens_per_param_prior: float = 20.0  # isoflop: where to centre each budget's models
    tokens_per_param: tuple[float, ...] = ()  # tokens: D = r N for each r
    tokens: tuple[float, ...] = ()  # tokens: or these D for every model
    param_count: ParamCount = "non_embedding"  # the N of C = 6 N D and of the fit (Kaplan: non-embedding)
    min_steps: int = 20  # a run shorter than this is not planned (its loss says little)
    warmup_fraction: float = 0.05  # of each run's own steps; the decay (config.opt) spans the rest
    min_layers: int = 1  # generated models get at least this many layers (width shrinks to keep N)
    # Generated models' position embedding and head width. "rope" (rotary, relative offsets):
    # at 1e4 parameters learned absolute positions take thousands of steps to find the
    # previous-token offsets an order-3 source needs, so every run ends on the bigram plateau
    # (eval loss 1.922 after 1,000 steps at D32 against 1.660 with rotary, measured). head_dim 0
    # = scaling_ladder_config's rule (4 below D=64); 8 or 16 halves the attention cost per token.
    position: str = "learned"
    head_dim: int = 0
    # Learning rate per size by a transfer rule: 0 = config.opt.learning_rate for every model;
    # W > 0 = learning_rate * W / d_model (Adam's hidden-layer rule of muP, Yang et al. 2022:
    # the step that is right at width W scales as 1 / width), recorded per run.
    lr_reference_width: int = 0
    # Cap on that rule's multiplier (0: none): below some width 1 / width asks for steps Adam
    # cannot take; on cpu_tiny's corpus D12 over 2,000 steps was best at 4e-2, and a D12 run at
    # the rule's 5.3e-2 stayed near the bigram plateau for 1,300 of its 4,300 steps.
    lr_scale_cap: float = 0.0
    # Learning rate by run length (0: off): a run of S > lr_horizon_steps steps trains at
    # (lr_horizon_steps / S) ** lr_horizon_exponent times the width rule's rate. The best
    # step shrinks as a run grows longer; one rate for every length tunes the short runs and
    # over-steps the long ones (measured on cpu_tiny: experiments/configs/scaling_laws.py).
    lr_horizon_steps: int = 0
    lr_horizon_exponent: float = 0.5
    # Repeat every run of budget `repeat_budget` (0: the smallest budget) with train.seed plus
    # each of these offsets, so the fit can measure run-to-run noise (() = no repeats). A budget
    # is the plan's: a FLOP budget of `budgets` (isoflop), or a ratio of `tokens_per_param` or a
    # count of `tokens` (tokens: every model's run at it, the smallest the cheapest, as at isoflop).
    repeat_budget: float = 0.0
    repeat_seeds: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("presets", "non_embedding_params", "budgets", "tokens_per_param", "tokens", "repeat_seeds"):
            value = getattr(self, name) or ()
            # --config.sweep.budgets=abc arrives as the string 'abc', which tuple() splits into letters
            kind = str if name == "presets" else int if name == "repeat_seeds" else (int, float)
            if isinstance(value, str) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
                example = {"presets": "('gpt2-tiny',)", "non_embedding_params": "(1e4, 3e4)", "budgets": "(1e11, 1e12)",
                           "tokens_per_param": "(20.0,)", "tokens": "(1e6, 4e6)", "repeat_seeds": "(1,)"}[name]
                raise SweepError(f"sweep.{name}={value!r} must be a tuple of "
                                 f"{'names' if name == 'presets' else 'whole numbers' if kind is int else 'numbers'}, "
                                 f"e.g. --config.sweep.{name}='{example}'.")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.aspect, bool) or not isinstance(self.aspect, int) or self.aspect < 1:
            raise SweepError(f"sweep.aspect={self.aspect!r} (d_model per layer of generated models) must be a whole "
                             "number >= 1, e.g. 16.")
        if not (isinstance(self.tokens_per_param_prior, (int, float)) and math.isfinite(self.tokens_per_param_prior)
                and self.tokens_per_param_prior > 0):
            raise SweepError(f"sweep.tokens_per_param_prior={self.tokens_per_param_prior!r} must be a positive "
                             "number of tokens per parameter, e.g. 20.0.")
        if 0 in self.repeat_seeds or len(set(self.repeat_seeds)) != len(self.repeat_seeds):
            raise SweepError(f"sweep.repeat_seeds={self.repeat_seeds} repeats "
                             f"{'seed 0, which every run already trains with' if 0 in self.repeat_seeds else 'a seed'}"
                             "; give distinct extra seeds (offsets from train.seed) other than 0, e.g. (1, 2).")
        if bool(self.presets) == bool(self.non_embedding_params):
            raise SweepError("sweep: the model ladder is empty; set exactly one of sweep.presets (zoo names) or "
                             "sweep.non_embedding_params (target sizes), e.g. non_embedding_params=(1e4, 3e4, 1e5).")
        unknown = [p for p in self.presets if p not in preset_names()]
        if unknown:
            get_config(unknown[0])  # raises the zoo's own "unknown model preset ... Did you mean" error
        if any(not (math.isfinite(n) and n >= 1e3) for n in self.non_embedding_params):
            raise SweepError(f"sweep.non_embedding_params={self.non_embedding_params} must all be >= 1e3.")
        if self.plan not in PlanKind.__args__ or self.param_count not in ParamCount.__args__:
            raise SweepError(f"sweep.plan={self.plan!r} / sweep.param_count={self.param_count!r}: choose plan from "
                             f"{PlanKind.__args__} and param_count from {ParamCount.__args__}.")
        if self.plan == "isoflop":
            if not self.budgets or any(not (math.isfinite(c) and c > 0) for c in self.budgets):
                raise SweepError(f"sweep.budgets={self.budgets} must be positive FLOP budgets for plan='isoflop', "
                                 "e.g. budgets=(1e11, 3e11, 1e12).")
            if self.models_per_budget < 3:
                raise SweepError(f"sweep.models_per_budget={self.models_per_budget}: an IsoFLOP parabola needs >= 3.")
        elif bool(self.tokens_per_param) == bool(self.tokens) or any(
                not v > 0 for v in self.tokens_per_param + self.tokens):
            raise SweepError(f"sweep.tokens_per_param={self.tokens_per_param}, sweep.tokens={self.tokens}: "
                             "plan='tokens' needs exactly one, all positive, e.g. tokens_per_param=(5, 10, 20, 40) "
                             "or tokens=(1e6, 4e6).")
        if self.lr_horizon_steps < 0 or not 0.0 <= self.lr_horizon_exponent <= 1.0:
            raise SweepError(f"sweep.lr_horizon_steps={self.lr_horizon_steps} must be >= 0 (0 = off) and "
                             f"lr_horizon_exponent={self.lr_horizon_exponent} in [0, 1], e.g. 500 and 0.5.")
        if self.min_layers < 1 or self.lr_reference_width < 0 or self.lr_scale_cap < 0:
            raise SweepError(f"sweep.min_layers={self.min_layers} must be >= 1, lr_reference_width="
                             f"{self.lr_reference_width} >= 0 (0 = one learning rate for every size) and "
                             f"lr_scale_cap={self.lr_scale_cap} >= 0 (0 = no cap).")
        if self.position not in ("learned", "rope") or self.head_dim < 0:
            raise SweepError(f"sweep.position={self.position!r} / sweep.head_dim={self.head_dim}: choose position "
                             "'learned' or 'rope' and head_dim >= 0 (0 = the ladder's own rule).")
        name, budgets = self.plan_budgets
        if self.repeat_seeds and self.repeat_budget and self.repeat_budget not in budgets:
            raise SweepError(f"sweep.repeat_budget={self.repeat_budget:g} is not one of sweep.{name}={budgets} "
                             f"(plan={self.plan!r}); repeat runs of an existing budget, e.g. "
                             f"repeat_budget={budgets[0]:g}.")
        if self.min_steps < 1 or not 0.0 <= self.warmup_fraction < 1.0:
            raise SweepError(f"sweep.min_steps={self.min_steps} must be >= 1 and warmup_fraction="
                             f"{self.warmup_fraction} in [0, 1).")

    @property
    def plan_budgets(self) -> tuple[str, tuple[float, ...]]:
        """The field that holds this plan's budgets, and them: isoflop's FLOPs, or tokens' ratios or counts."""
        if self.plan == "isoflop":
            return "budgets", self.budgets
        return ("tokens_per_param", self.tokens_per_param) if self.tokens_per_param else ("tokens", self.tokens)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "SweepSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SweepError(f"sweep: unknown field(s) {unknown}; known: {sorted(known)}.")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class LadderModel:
    """One rung: its config, the `config.model` overrides that rebuild it, and its size."""

    name: str
    config: ModelConfig
    overrides: dict[str, Any]  # preset + fields, as experiments/configs/pretrain.py's config.model takes them
    params_total: int
    params_non_embedding: int
    train_flops_per_token: int  # exact: 6N + attention + unembedding, at the sweep's seq_len

    def params(self, kind: ParamCount) -> int:
        return self.params_non_embedding if kind == "non_embedding" else self.params_total


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One training run of the sweep. `run_id` names its directory and is stable across reruns."""

    run_id: str
    model: LadderModel
    num_steps: int
    batch_size: int
    seq_len: int
    N: int  # parameters as sweep.param_count says
    budget: float | None  # isoflop: the nominal C of its profile; tokens: None
    tokens_per_param_target: float | None  # tokens: the planned D / N (before rounding to whole steps)
    seed: int = 0  # train.seed: the sweep's train.seed, plus one of sweep.repeat_seeds for a repeated run
    learning_rate_scale: float = 1.0  # x config.opt.learning_rate (sweep.lr_reference_width's rule)

    @property
    def tokens(self) -> int:
        """D: token positions consumed, steps x batch x seq_len."""
        return self.num_steps * self.batch_size * self.seq_len

    @property
    def compute_6nd(self) -> float:
        return FLOPS_PER_PARAM_TOKEN * self.N * self.tokens

    @property
    def compute_exact(self) -> float:
        return float(self.model.train_flops_per_token) * self.tokens


def _rung(name: str, config: ModelConfig, overrides: dict[str, Any], seq_len: int) -> LadderModel:
    counts = sizing.param_counts(config)
    flops = sizing.flops_per_token(config, seq_len, include_embedding=True).train
    return LadderModel(name, config, overrides, counts.total, counts.non_embedding, flops)


def trained_model_fields(overrides: Mapping[str, Any], model_fields: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's model fields as its training reads them (experiments/scaling_laws/sweep.run_config):
    the sweep config's model section (its set fields) under the rung's own overrides."""
    kept = {k: v for k, v in (model_fields or {}).items() if v is not None and k not in overrides}
    return {**kept, **overrides}


def ladder_models(spec: SweepSpec, *, vocab_size: int, seq_len: int,
                  model_fields: Mapping[str, Any] | None = None) -> list[LadderModel]:
    """The ladder, smallest first, every model sized for the sweep's vocabulary and seq_len, and as
    it trains: with the sweep config's other model fields (`model_fields`, config.model: a
    num_kv_heads=1 trained smaller models than runs.csv recorded, 12,496 parameters against 14,496)."""
    models = []

    def model_config(overrides: dict[str, Any]) -> ModelConfig:
        fields = trained_model_fields(overrides, model_fields)
        return get_config(fields.pop("preset"), **fields)

    if spec.presets:
        for name in spec.presets:
            base = model_config({"preset": name, "vocab_size": vocab_size})
            if base.family != "decoder":
                raise SweepError(f"sweep.presets: {name!r} is a {base.family} model; a sweep trains causal-LM "
                                 "decoders, e.g. 'gpt2-tiny', 'llama-20m', 'scale-1e5'.")
            if seq_len > base.max_len:
                raise SweepError(f"sweep.presets: train.seq_len={seq_len} is longer than {name!r}'s max_len="
                                 f"{base.max_len}; lower train.seq_len or pick longer-context presets.")
            models.append(_rung(name, base, {"preset": name, "vocab_size": vocab_size}, seq_len))
    else:
        for target in spec.non_embedding_params:
            ladder = scaling_ladder_config(target, aspect=spec.aspect, vocab_size=vocab_size, max_len=seq_len)
            num_layers = max(ladder.num_layers, spec.min_layers)  # deeper and narrower at the same 12 L D^2
            if num_layers != ladder.num_layers or spec.head_dim:
                unit = spec.head_dim or 4
                d_model = max(unit, unit * round(math.sqrt(target / (12 * num_layers)) / unit))
                ladder = ladder.replace(num_layers=num_layers, d_model=d_model, num_heads=d_model // unit,
                                        d_ff=4 * d_model)
            ladder = ladder.replace(position=spec.position)
            fields = {f: getattr(ladder, f) for f in _LADDER_FIELDS}
            name = f"ladder-L{ladder.num_layers}-D{ladder.d_model}"
            overrides = {"preset": LADDER_BASE_PRESET, **fields}
            models.append(_rung(name, model_config(overrides).replace(name=name), overrides, seq_len))
    models.sort(key=lambda m: m.params_non_embedding)
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SweepError(f"sweep: ladder sizes {duplicates} appear twice (targets too close to round to distinct "
                         "shapes); space the targets further apart or drop one.")
    return models


def plan_runs(spec: SweepSpec, models: Sequence[LadderModel], *, batch_size: int, seq_len: int,
              seed: int = 0) -> list[PlannedRun]:
    """The sweep's runs, by budget (isoflop) or model (tokens), each at least spec.min_steps long.
    `seed` (config.train.seed) is the whole sweep's: every run trains with it, a repeated run with
    it plus its sweep.repeat_seeds offset. A run id names a seed other than 0, so at the default 0
    ids (and the run directories of existing sweeps) are what they were."""
    tokens_per_step = batch_size * seq_len
    runs: list[PlannedRun] = []

    repeated = spec.repeat_budget or min(spec.plan_budgets[1], default=None)

    def add(model: LadderModel, tokens: float, budget: float | None, ratio: float | None, plan_budget: float) -> bool:
        steps = round(tokens / tokens_per_step)
        if steps < spec.min_steps:
            return False
        scale = learning_rate_scale(spec, model.config.d_model, steps)
        offsets = (0, *spec.repeat_seeds) if plan_budget == repeated else (0,)
        for run_seed in (seed + offset for offset in offsets):
            runs.append(PlannedRun(f"{model.name}-{steps}steps" + (f"-seed{run_seed}" if run_seed else ""), model,
                                   steps, batch_size, seq_len, model.params(spec.param_count), budget, ratio,
                                   run_seed, scale))
        return True

    if spec.plan == "tokens":
        for model in models:
            N = model.params(spec.param_count)
            for value in spec.plan_budgets[1]:
                ratio = value if spec.tokens_per_param else value / N
                add(model, ratio * N, None, ratio, value)
        if not runs:
            given = f"tokens_per_param={spec.tokens_per_param}" if spec.tokens_per_param else f"tokens={spec.tokens}"
            raise SweepError(f"sweep.{given}: every run would be shorter than min_steps={spec.min_steps} steps of "
                             f"{tokens_per_step} tokens; raise the token budgets or use larger models.")
    else:
        for budget in spec.budgets:
            # Models that fit the budget for at least min_steps, then the window nearest N*.
            min_tokens = spec.min_steps * tokens_per_step
            fits = [m for m in models if budget / (FLOPS_PER_PARAM_TOKEN * m.params(spec.param_count)) >= min_tokens]
            if len(fits) < 3:
                smallest = models[0].params(spec.param_count)
                need = FLOPS_PER_PARAM_TOKEN * smallest * spec.min_steps * tokens_per_step
                which = "any model" if not fits else f"only {len(fits)} model(s), a parabola needs 3"
                raise SweepError(f"sweep.budgets: C={budget:.3g} FLOPs is too small for {which} at min_steps="
                                 f"{spec.min_steps} x {tokens_per_step} tokens (the smallest model needs "
                                 f"{need:.3g}); raise the budget or add smaller models.")
            optimum = math.sqrt(budget / (FLOPS_PER_PARAM_TOKEN * spec.tokens_per_param_prior))
            nearest = min(range(len(fits)), key=lambda i: abs(math.log(fits[i].params(spec.param_count) / optimum)))
            count = min(spec.models_per_budget, len(fits))
            first = min(max(0, nearest - count // 2), len(fits) - count)
            for model in fits[first:first + count]:
                add(model, budget / (FLOPS_PER_PARAM_TOKEN * model.params(spec.param_count)), budget, None, budget)
    ids = [run.run_id for run in runs]
    if len(set(ids)) != len(ids):
        raise SweepError("sweep: two runs train the same model for the same number of steps (equal budgets or "
                         "ratios?); make the budgets / ratios distinct.")
    return runs


def learning_rate_scale(spec: SweepSpec, d_model: int, steps: int) -> float:
    """The multiple of config.opt.learning_rate a run of `steps` steps of a model of width
    d_model trains at: lr_reference_width / d_model (1 when the rule is off), capped at
    lr_scale_cap, times (lr_horizon_steps / steps) ** lr_horizon_exponent for runs longer than
    lr_horizon_steps (when set)."""
    scale = spec.lr_reference_width / d_model if spec.lr_reference_width else 1.0
    scale = min(scale, spec.lr_scale_cap) if spec.lr_scale_cap else scale
    if spec.lr_horizon_steps and steps > spec.lr_horizon_steps:
        scale *= (spec.lr_horizon_steps / steps) ** spec.lr_horizon_exponent
    return scale


def warmup_steps(spec: SweepSpec, num_steps: int) -> int:
    """Linear warmup over warmup_fraction of the run (at least one step when the fraction is > 0)."""
    return min(num_steps, max(1, round(spec.warmup_fraction * num_steps))) if spec.warmup_fraction else 0


def estimated_seconds(runs: Sequence[PlannedRun], peak_flops: float, mfu: float) -> float:
    """Training time of `runs` at model-FLOPs utilisation `mfu` of `peak_flops` FLOP/s (exact FLOPs;
    compilation, evaluation and checkpointing not included): an estimate, not a measurement."""
    if not (peak_flops > 0 and 0 < mfu <= 1):
        raise SweepError(f"peak_flops={peak_flops:g} must be > 0 and mfu={mfu} in (0, 1].")
    return sum(run.compute_exact for run in runs) / (peak_flops * mfu)
