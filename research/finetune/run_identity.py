"""What makes two fine-tuning runs the same run: the fingerprint run.json records.

A workdir holds one run. `claim_workdir` (research/training/workdir.py's claim with this
fingerprint) writes <workdir>/run.json at the first start and refuses, in one line, a later
start whose fingerprint differs: resuming would mix adapters trained on another base, or
metrics of another data set, or fail deep in orbax on another parameter tree. The
fingerprint holds what a checkpoint's meaning depends on: the path, the base model (init,
model overrides, tokenizer), the data (local files' contents too), LoRA's shape, the objective's
settings, seq_len, the seed, the optimizer's name and whether it clips gradients (another optimizer-state tree; a
run.json recorded before lacks it, and workdir.claim_all then takes it from the newest
checkpoint's config, or compares nothing, as for pretraining). What may change on resume is
left out: num_steps, the learning rate and schedule, clip_norm's value while clipping stays on
or off, logging and evaluation settings, the mesh, compute dtype and dropout.

Local paths are recorded absolute: the same relative path from another directory is
another file. run.json is therefore also where a loader follows a run's chain of inits
(research/finetune/base_model.py): its "init" and "tokenizer" (the saved config's may be
relative to the directory the run was launched from), and "init_checkpoint_step", the step of
its base a LoRA run's adapters were trained on and are merged into; for an 'hf:' init,
"init_files_sha256", the digest of that folder's weight and config files at the run's first start
(a folder rewritten since, e.g. by an export into it, is refused at resume and at load).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, Mapping

from research.models.config import ConfigError
from research.training import workdir as workdir_lib

# Fields that do not change what a checkpoint means, and those of train that do: pretraining's.
_MODEL_FIELDS_FREE_ON_RESUME = workdir_lib.MODEL_FIELDS_FREE_ON_RESUME
_TRAIN_FIELDS = workdir_lib.TRAIN_FIELDS_IN_FINGERPRINT
_DATA_PATH_FIELDS = ("train_file", "eval_file", "folder")
# run.json's digest of an 'hf:' init folder's files (hf_files_digest), recorded at the run's first start.
INIT_FILES_KEY = "init_files_sha256"


def absolute_spec(spec: str) -> str:
    """'checkpoint:<path>' / 'hf:<path>' / 'reward_model:<path>' with the path made absolute."""
    kind, sep, path = str(spec).partition(":")
    if not sep or not path or "://" in path or kind not in ("checkpoint", "hf", "reward_model"):
        return str(spec)
    return f"{kind}:{os.path.abspath(path)}"


def hf_files_digest(folder: str) -> str | None:
    """sha256 over the names and contents of the files of Hugging Face folder `folder` that from_hf
    reads (_read_by_from_hf); None where it is no local folder."""
    # Contents, not mtimes or sizes: a folder copied or restored elsewhere and back keeps its contents
    # but not its mtimes, and an export into the folder rewrote same-sized files with other weights.
    if "://" in folder or not os.path.isdir(folder):
        return None
    stats = []
    for name in sorted(os.listdir(folder)):
        if _read_by_from_hf(name) and os.path.isfile(os.path.join(folder, name)):
            st = os.stat(os.path.join(folder, name))
            stats.append((name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return _files_digest(os.path.abspath(folder), tuple(stats))


def data_files_digest(path: str) -> str | None:
    """sha256 over the contents of data file `path`, or of the .txt / .md files a domain run reads
    under folder `path` (with their names in it); None where there is nothing local to read (the
    loader says why in its own words)."""
    if "://" in path:
        return None
    if os.path.isfile(path):
        root, files = os.path.dirname(path), [path]
    elif os.path.isdir(path):
        from research.finetune.domain import domain_files
        try:
            root, files = path, domain_files(path)
        except ConfigError:
            return None
    else:
        return None
    stats = []
    for file in files:
        st = os.stat(file)
        stats.append((os.path.relpath(file, root), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return _files_digest(os.path.abspath(root), tuple(stats))


def _read_by_from_hf(name: str) -> bool:
    """config.json and the weights (research/models/hf/checkpoint_files.py): model*.safetensors or
    pytorch_model*.bin, sharded or not, with their index. A training_args.bin or an adapter file
    beside them is not the model: one added must not refuse the run's resume."""
    safetensors = name.startswith("model") and name.endswith((".safetensors", ".safetensors.index.json"))
    torch_file = name.startswith("pytorch_model") and name.endswith((".bin", ".bin.index.json"))
    return name == "config.json" or safetensors or torch_file


@functools.lru_cache(maxsize=8)
def _files_digest(folder: str, stats: tuple[tuple[str, int, int, int, int], ...]) -> str:
    # Cached by the files' stat within one process only: a resume's claim reads the folder twice
    # (check_init_files, the fingerprint), and a model's weights (or a data set) may be gigabytes.
    digest = hashlib.sha256()
    for name, *_ in stats:
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(f"{name}\0{hashlib.file_digest(f, 'sha256').hexdigest()}\n".encode())
    return digest.hexdigest()


def _latest_steps(spec: str) -> list[int] | None:
    """The newest checkpoint steps of a 'checkpoint:<run>' (or 'reward_model:') spec's chain: the
    run's own, then, for a fine-tuning run, its base's, and so on; None for any other spec. A LoRA
    run merges into the base step its own run.json records (base_model.lora_base_step), fixed by
    that record, so the base's newest here only refuses more resumes, never fewer."""
    from research.training.checkpoint_loading import checkpoint_root, checkpoint_steps_in
    kind, _, path = str(spec).partition(":")
    steps: list[int] = []
    while kind in ("checkpoint", "reward_model") and path and len(steps) < 8:  # 8: a chain, never a cycle
        try:
            found = checkpoint_steps_in(checkpoint_root(path))
        except Exception:  # a missing run is reported where the base loads, in its own words
            break
        if not found:
            break
        steps.append(int(found[-1]))
        kind, _, path = str(recorded_init(path) or "").partition(":")
    return steps or None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _absolute_tokenizer(config: Mapping[str, Any]) -> str:
    """config's tokenizer with a local path made absolute ("" and "char" name no file)."""
    spec = str(config.get("tokenizer", "") or "")
    return spec if spec in ("", "char") or "://" in spec else os.path.abspath(spec)


def finetune_fingerprint(config: Mapping[str, Any], *, init_files: bool = True) -> dict[str, Any]:
    """The fields of a fine-tuning config (a plain dict, as checkpoints save it) that identify
    the run, flattened to dotted keys (a pretraining config gives one that differs). init_files:
    whether to read (and hash) an 'hf:' base the run reloads (_reloads_init)."""
    from research.training.optimizers import OptimizerConfig  # optax on use, as workdir.run_fingerprint

    section = lambda name: dict(config.get(name) or {})
    model = {k: v for k, v in section("model").items() if v is not None and k not in _MODEL_FIELDS_FREE_ON_RESUME}
    data = {k: v for k, v in section("data").items() if k != "data_dir"}
    for key in _DATA_PATH_FIELDS:
        if data.get(key):
            data[key] = os.path.abspath(str(data[key]))
            # The contents too: a file rewritten at its path (rows cleaned or added) resumed the saved data
            # position on other rows, beside a before_eval_loss scored on the old eval file.
            if (digest := data_files_digest(data[key])) is not None:
                data[f"{key}_sha256"] = digest
    if data.get("synthetic") and not (data.get("train_file") and data.get("eval_file")):
        # Records generated here, not read: their generator's version is part of what was trained on.
        from research.finetune.preference_data import SYNTHETIC_SPLIT_VERSION
        data["synthetic_split_version"] = SYNTHETIC_SPLIT_VERSION
    if _path_ends_inputs_with_eos(config):
        data["input_ends_with_eos"] = True
    if _path_reads_masked_lm_window(config):
        data["input_in_masked_lm_window"] = True
    if _hf_tagging_words_split_as_transformers(config):
        data["words_split_as_transformers"] = True
    lora = section("lora")
    lora = {"rank": int(lora.get("rank") or 0)} if not lora.get("rank") else \
        {k: lora.get(k) for k in ("rank", "alpha", "targets")}  # dropout only regularises: free
    path = config.get("path")
    identity: dict[str, Any] = {
        "path": path, "init": absolute_spec(config.get("init", "")), "tokenizer": _absolute_tokenizer(config),
        "model": model, "data": data, "lora": lora,
        "train": {k: section("train")[k] for k in _TRAIN_FIELDS if k in section("train")},
        # Clipping on or off is another optimizer-state tree: only caught at restore without it.
        "opt": {"name": section("opt").get("name", "adamw"),
                "clip_norm>0": bool(section("opt").get("clip_norm", OptimizerConfig.clip_norm))},
    }
    # A base or reference read from a run's latest checkpoint is that step: if the run trains on,
    # a resume would load another model (seen: a DPO step-3 loss of 0.6817 against 0.6734), so the
    # step belongs to the run's identity and a rerun after it moved is refused, not resumed inexactly.
    identity["init_checkpoint_step"] = _latest_steps(config.get("init", ""))
    # An 'hf:' base that a resume or a LoRA merge reloads: its files at the first start are part of
    # the run too (an export into the folder merged the adapters again at each rerun).
    kind, _, folder = str(config.get("init", "")).partition(":")
    if kind == "hf" and init_files and _reloads_init(config):
        identity[INIT_FILES_KEY] = hf_files_digest(folder)
    if path == "preference":
        reference = section("preference").get("reference", "") or ""
        identity["preference"] = {**section("preference"), "reference": absolute_spec(reference),
                                  "reference_checkpoint_step": _latest_steps(reference)}
        # An 'hf:' reference is read again at every start: its files are the run's, as an init's are.
        ref_kind, _, ref_folder = reference.partition(":")
        if ref_kind == "hf" and (digest := hf_files_digest(ref_folder)) is not None:
            identity["preference"]["reference_files_sha256"] = digest
    if path == "grpo":
        reward = section("grpo").get("reward", "rule")
        identity["grpo"] = {**section("grpo"), "reward": absolute_spec(reward),
                            "reward_checkpoint_step": _latest_steps(reward)}
    if "num_token_labels" in config:
        identity["num_token_labels"] = config["num_token_labels"]
    return workdir_lib.flatten_config(_plain(identity))


def _path_ends_inputs_with_eos(config: Mapping[str, Any]) -> bool:
    """Whether a text-to-text run's inputs end with the eos this codebase's own tokenizers put after
    a T5's encoder input in pretraining (tokenizer_loading.special_tokens_around; a Hugging Face tokenizer's
    template puts its own). Inputs had no eos before 2026-12-07: a run started then trained on other
    rows, and its run.json, lacking this field, refuses a resume that would mix the two."""
    if config.get("path") != "text_to_text":
        return False
    from research.evaluation.tokenizer_loading import has_hf_tokenizer
    spec = _resolved_tokenizer(config)
    return not (spec and has_hf_tokenizer(spec))


def _path_reads_masked_lm_window(config: Mapping[str, Any]) -> bool:
    """Whether a classification or tagging run reads its rows inside the <s> ... </s> window a BERT
    pretrained with this codebase's SentencePiece tokenizer was trained on, its tagging words joined
    as that tokenizer encodes the text (tokenizer_loading.special_tokens_around, encode_words). Rows
    had neither before 2026-12-07: a run started then trained on other rows, and its run.json,
    lacking this field, refuses a resume that would mix the two. char and Hugging Face tokenizers'
    rows (BERT's [CLS] ... [SEP]) kept their special tokens: those runs keep their identity, except
    byte-level BPE tagging runs, whose words are split otherwise (_hf_tagging_words_split_as_transformers)."""
    if config.get("path") not in ("classification", "token_classification"):
        return False
    from research.evaluation.tokenizer_loading import has_hf_tokenizer
    spec = _resolved_tokenizer(config)
    if not spec and str(config.get("init", "")).partition(":")[0] != "checkpoint":
        return False  # init='random' with tokenizer '': load_base_model's char
    return spec != "char" and not has_hf_tokenizer(spec)


# Words whose old tagging encoding (each word alone, the tokenizer's " " between) and pre-split one
# differ under a byte-level BPE ('Ġ' between words, 'Ġworld' after the change) and agree under WordPiece.
_PROBE_WORDS = ("hello", "world")


def _hf_tagging_words_split_as_transformers(config: Mapping[str, Any]) -> bool:
    """Whether a tagging run with a Hugging Face tokenizer reads rows that changed on 2026-12-07:
    its words were encoded one by one with the tokenizer's encoding of " " between them, and are
    now encoded as transformers encodes pre-split words (tokenizer_loading.encode_words). The rows
    are the same for WordPiece (BERT), other for every tokenizer that encodes " " as a token
    (byte-level BPE: GPT-2, RoBERTa; SentencePiece-style: T5, Llama, Mistral), so only those runs
    carry this field: one recorded before, lacking it, is refused rather than resumed on other
    rows (runs started between f9a8991 and this field too). Decided on two probe words with the
    run's own tokenizer."""
    if config.get("path") != "token_classification":
        return False
    from research.evaluation.tokenizer_loading import encode_words, has_hf_tokenizer, load_tokenizer
    spec = _resolved_tokenizer(config)
    if not spec or spec == "char" or not has_hf_tokenizer(spec):
        return False
    tokenizer = load_tokenizer(spec)
    first, second = (list(tokenizer.encode(word)) for word in _PROBE_WORDS)
    return encode_words(tokenizer, _PROBE_WORDS)[0] != first + list(tokenizer.encode(" ")) + second


def _resolved_tokenizer(config: Mapping[str, Any]) -> str:
    """The tokenizer spec a run of `config` loads: config.tokenizer, else its init's own (an 'hf:'
    folder; a checkpoint's recorded one, "" for a pretraining run's SentencePiece model)."""
    spec = _absolute_tokenizer(config)
    kind, _, where = str(config.get("init", "")).partition(":")
    if not spec and kind == "hf":
        spec = where  # the folder's own tokenizer (load_base_model)
    elif not spec and kind == "checkpoint":
        from research.finetune.base_model import finetune_run_tokenizer
        try:
            spec = finetune_run_tokenizer(where)  # "" for a pretraining run: its own SentencePiece model
        except Exception:  # no run there: load_base_model says so in its own words
            spec = ""
    return spec


def _reloads_init(config: Mapping[str, Any]) -> bool:
    """Whether a run of `config` reads its init again after its first checkpoint: a LoRA run's base
    (frozen, merged at every load), a preference run's reference when that is the init. A full
    fine-tuning run restores every parameter from its own checkpoints: its base may change."""
    lora_rank = int(dict(config.get("lora") or {}).get("rank") or 0)
    reference = dict(config.get("preference") or {}).get("reference") or ""
    return lora_rank > 0 or (config.get("path") == "preference" and not reference)


def claim_workdir(workdir: str, config: Mapping[str, Any], *, record: bool = True) -> list[str]:
    """Refuse (WorkdirError, one line) a workdir holding another run, else create it and record
    this run; returns [workdir] when this call claimed it first (for workdir_lib.unclaim)."""
    from research.training.checkpoint_loading import CHECKPOINTS_DIR, checkpoint_steps_in
    fingerprint = finetune_fingerprint
    recorded = _recorded_fingerprint(workdir) or {}
    saved = bool(checkpoint_steps_in(os.path.join(workdir, CHECKPOINTS_DIR)))
    kind, _, folder = str(config.get("init", "")).partition(":")
    if saved and INIT_FILES_KEY not in recorded:
        # A run recorded before the digest was (or before run.json): what its folder held at its start
        # is unknown, so nothing is compared, nor read, nor recorded now (its files may have changed).
        fingerprint = functools.partial(finetune_fingerprint, init_files=False)
    elif saved and kind == "hf" and hf_files_digest(folder) is None:
        # The folder is gone (an unmounted disk): its loader says so in its own words; compared here,
        # the claim would call the workdir another run's and offer to delete it.
        fingerprint = lambda c: {**finetune_fingerprint(c, init_files=False), INIT_FILES_KEY: recorded[INIT_FILES_KEY]}
    elif saved and recorded.get("init") == absolute_spec(config.get("init", "")):
        check_init_files(workdir)  # in its own words; the claim would say "another run" and to delete it
    spec = _resolved_tokenizer(config)
    if recorded and spec and spec != "char" and "://" not in spec and not os.path.exists(spec):
        # The tokenizer is gone (an unmounted disk): its loader says so in its own words. The fields its
        # files decide are taken as recorded, or the claim would call the workdir another run's.
        by_files = functools.partial(_with_recorded, fingerprint, recorded, _DECIDED_BY_TOKENIZER_FILES)
        return workdir_lib.claim_all([(workdir, config)], record=record, fingerprint=by_files)
    return workdir_lib.claim_all([(workdir, config)], record=record, fingerprint=fingerprint)


# Fingerprint fields read off the tokenizer's files (what kind of tokenizer it is).
_DECIDED_BY_TOKENIZER_FILES = ("data.input_in_masked_lm_window", "data.words_split_as_transformers")


def _with_recorded(fingerprint: Any, recorded: Mapping[str, Any], keys: tuple[str, ...],
                   config: Mapping[str, Any]) -> dict[str, Any]:
    """fingerprint(config) with `keys` as `recorded` holds them (absent there: absent here)."""
    own = {k: v for k, v in fingerprint(config).items() if k not in keys}
    return {**own, **{k: recorded[k] for k in keys if k in recorded}}


def check_init_files(workdir: str) -> None:
    """ConfigError (one line) when the 'hf:' folder the run in `workdir` started from holds other
    weight or config files than run.json recorded at its first start: its checkpoints (a LoRA run's
    adapters, merged into that folder's weights at every load) fit the files it trained on. Nothing
    is checked for another init, a run recorded before the digest was, or a folder gone (its loader
    says so)."""
    recorded = _recorded(workdir, INIT_FILES_KEY)
    kind, _, folder = str(recorded_init(workdir) or "").partition(":")
    if kind != "hf" or not isinstance(recorded, str):
        return
    now = hf_files_digest(folder)
    if now is not None and now != recorded:
        raise ConfigError(f"the run in {workdir!r} started from init=hf:{folder}, whose weight or config files "
                          f"changed since (sha256 {recorded[:12]} then, {now[:12]} now; an export_dir there rewrites "
                          "them): its checkpoints fit the files it trained on; restore those files, or train again "
                          "from the folder as it is now in a new --workdir.")


def base_is_recorded(workdir: str) -> bool:
    """Whether every step of the run in `workdir` merges into one known base: run.json records a
    'checkpoint:' base's step or an 'hf:' folder's files (check_init_files), or init='random', which
    is re-created from the run's seed (part of its identity)."""
    return bool(recorded_init_steps(workdir)) or recorded_init(workdir) == "random" or \
        isinstance(_recorded(workdir, INIT_FILES_KEY), str)


def _recorded_fingerprint(workdir: str) -> dict[str, Any] | None:
    """`workdir`'s run.json fingerprint; None without one (or an unreadable file)."""
    try:
        with open(os.path.join(workdir, workdir_lib.RUN_FILE), encoding="utf-8") as f:
            recorded = json.load(f)["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _recorded(workdir: str, key: str) -> Any:
    """Fingerprint field `key` of `workdir`'s run.json; None without one (or an unreadable file)."""
    return (_recorded_fingerprint(workdir) or {}).get(key)


def recorded_init(workdir: str) -> str | None:
    """The (absolute) init spec recorded in `workdir`'s run.json; None when it records none."""
    init = _recorded(workdir, "init")
    return init if isinstance(init, str) and init else None


def recorded_init_steps(workdir: str) -> list[int] | None:
    """The steps of its init's chain `workdir`'s run recorded at its first start (the base's first:
    what a LoRA run's adapters were trained on); None for a run.json recorded before that field,
    or an init that is no run ('random', 'hf:')."""
    steps = _recorded(workdir, "init_checkpoint_step")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, int) for s in steps):
        return None
    return [int(s) for s in steps]


def run_init_spec(path: str, saved: Mapping[str, Any]) -> str:
    """The init of the fine-tuning run in `path` (its workdir or checkpoints/), whose saved config
    is `saved`: run.json's absolute spec. The saved one may be relative to the directory that run
    was launched from (another directory failed, or found a same-named folder there), so it is
    used only for a run recorded without run.json."""
    from research.training.checkpoint_loading import checkpoint_root, run_workdir
    return recorded_init(run_workdir(checkpoint_root(path))) or str(saved.get("init", ""))


def run_tokenizer_spec(path: str, saved: Mapping[str, Any]) -> str:
    """config.tokenizer of the fine-tuning run in `path`, as run.json records it (a local file made
    absolute, as init: see run_init_spec); the saved config's for a run recorded without it."""
    from research.training.checkpoint_loading import checkpoint_root, run_workdir
    recorded = _recorded(run_workdir(checkpoint_root(path)), "tokenizer")
    return recorded if isinstance(recorded, str) else str(saved.get("tokenizer", "") or "")
