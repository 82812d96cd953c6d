"""Command-line glue shared by the experiment mains."""
from __future__ import annotations

import os
import re
import sys
from typing import NoReturn

from absl import flags
from ml_collections.config_flags import config_flags as ml_config_flags


def _config_flags() -> list[flags.Flag]:
    return [flag for flag in flags.FLAGS._flags().values()
            if isinstance(getattr(flag, "parser", None), ml_config_flags.ConfigFileFlagParser)]


def _unknown_override(error: Exception, argv: list[str]) -> str:
    """'--config.train.num_stepz is not a config key; did you mean "num_steps"?' from ml_collections' KeyError."""
    text = str(error).replace("\\'", "'").replace("\\n", " ").replace('\\"', '"')
    key = (re.findall(r"'([^'\s]+)'", text) or ["?"])[0]
    flag = next((a.split("=")[0] for a in argv[1:] if re.search(rf"\.{re.escape(key)}(=|$|\.)", a)), key)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    fix = f'did you mean "{hint.group(1)}"?' if hint else "see the config file for its keys."
    group, _, option = flag.lstrip("-").rpartition(".")
    if _is_empty_group(group, argv):  # e.g. objective_options: a dict that declares no keys, so set it whole
        fix = f"""{group} declares no keys; set it whole: --{group}="{{'{option}': VALUE}}"."""
    return f"error: {flag} is not a config key; {fix}"


def _is_empty_group(dotted: str, argv: list[str]) -> bool:
    """Whether `dotted` ("config.objective_options") is an empty dict in the config file that
    argv's --config names (loaded again: on this error path the flag holds no value yet)."""
    name, *path = dotted.split(".")
    flag = next((f for f in _config_flags() if f.name == name), None)
    source = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith(f"--{name}=")), None)
    if flag is None or source is None or not path:
        return False
    try:
        node = flag.parser.parse(source)
    except Exception:  # the config's own failure is reported elsewhere; no hint from it here
        return False
    for part in path:
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return hasattr(node, "keys") and not list(node.keys())


def _missing_config_file(name: str, path: str) -> str:
    folder = os.path.dirname(path) or "."
    there = sorted(n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_")) \
        if os.path.isdir(folder) else []
    return (f"error: --{name}: config file {path!r} does not exist"
            + (f"; files in {folder}/: {', '.join(there)}." if there else "; give a path like experiments/configs/pretrain.py:gpt_tiny."))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with every bad flag or --config (an unknown preset, a missing config file,
    a misspelled override key) as one line on stderr, not a traceback; nothing is written.

    Use as `app.run(main, flags_parser=parse_flags)`.
    """
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as error:
        last = str(error).strip().splitlines()[-1].strip()
        group = re.search(r"flag --([\w.]+)=(\S*): Failed to parse '.*' as a ConfigDict", last)
        if group:  # e.g. --config.model=gpt2-small: a group of fields was given a bare value
            name, value = group.groups()
            example = f"--{name}.preset={value}" if name.endswith(".model") else f"--{name}.FIELD={value}"
            sys.exit(f"error: --{name} is a group of fields, not a value; set one of its fields, e.g. {example} "
                     "(the config file lists them).")
        sys.exit(f"error: {re.sub(r'^[A-Za-z]*Error: ', '', last)}")
    except (AttributeError, KeyError) as error:  # an override of a key the config does not have
        sys.exit(_unknown_override(error, argv))
    except OSError as error:  # an override on a config file that failed to load
        missing = re.search(r"No such file or directory: '([^']*)'", str(error))
        flag = next((f for f in _config_flags() if f.name in {a.lstrip("-").split("=")[0] for a in argv}), None)
        if missing is None or flag is None:
            raise
        sys.exit(_missing_config_file(flag.name, missing.group(1)))
    _exit_if_config_file_missing()
    return remaining


def _exit_if_config_file_missing() -> None:
    for flag in _config_flags():
        if flag.value is None:
            continue
        try:
            flag.value.keys  # ml_collections defers a load failure to the first access; surface it now
        except OSError:
            sys.exit(_missing_config_file(flag.name, str(flag.serialize()).split("=", 1)[-1].split(":", 1)[0]))


def exit_stopped(stop: BaseException | None, *, one_run: bool = False) -> NoReturn:
    """Exit after a Ctrl-C / SIGTERM: `stop` (preemption.Interrupted or workers.Stopped, whose
    checkpoints are saved) in one line with its exit code, 130 / 143, so a scheduler sees the job
    was stopped, not finished; a KeyboardInterrupt (a second Ctrl-C, one outside a training loop,
    or a SIGTERM before a loop's Guard: research.early_interrupts.TerminatedEarly) or None (a
    Ctrl-C), that line for a stop without a save, exit 130 / 143. one_run: the command trains one
    run (experiments.pretrain, experiments.finetune), which continues from its last checkpoint, not a
    study's runs from theirs."""
    if stop is None or isinstance(stop, KeyboardInterrupt):
        from research.early_interrupts import signal_exit_code, stop_signal_name
        name = stop_signal_name(stop)
        where = ("last checkpoint, or from the start if none was saved yet" if one_run
                 else "last checkpoint(s), or from the start where none was saved yet")
        print(f"\nerror: stopped by {name} without saving this step; rerun the same command to continue from the "
              f"{where}.", file=sys.stderr)
        sys.exit(signal_exit_code(name))
    print(f"\nerror: {stop}", file=sys.stderr)  # on a line of its own, not after a progress bar's
    sys.exit(stop.exit_code)


def exit_dry_run_stopped(interrupt: KeyboardInterrupt, prints: str) -> NoReturn:
    """A Ctrl-C / SIGTERM during a --dry_run, which `prints` (e.g. "the plan"): one line, exit
    130 / 143 like a stopped command; the dry run writes nothing, so there is nothing to continue
    from (exit_stopped's line, which says to continue from the last checkpoint, does not apply)."""
    from research.early_interrupts import signal_exit_code, stop_signal_name
    name = stop_signal_name(interrupt)
    print(f"stopped by {name} during the dry run (it writes nothing); rerun it to print {prints}.", file=sys.stderr)
    sys.exit(signal_exit_code(name))


def stop_if_interrupted_early(*, guarded: bool = True) -> None:
    """For a main, after its own imports: from here a Ctrl-C also raises KeyboardInterrupt (the
    main catches it as a stop; a SIGTERM raises its subclass TerminatedEarly); one that came
    earlier (the command installs research.early_interrupts.remember_early_interrupts before its
    imports, where JAX's gc callback swallowed a Ctrl-C and the run went on to the end with exit
    0, and a SIGTERM killed it) stops the command now, before any work: one line, exit 130 / 143.
    guarded: the command trains under a preemption.Guard, which stops for a Ctrl-C Python
    swallows later (else Python's own report of it is kept)."""
    from research.early_interrupts import (raise_if_interrupted_early, signal_exit_code, stop_signal_name,
                                           watch_early_interrupts)
    try:
        watch_early_interrupts(quiet_when_swallowed=guarded)
        raise_if_interrupted_early()
    except KeyboardInterrupt as stop:  # the one remembered, or one arriving just now (TerminatedEarly: SIGTERM)
        name = stop_signal_name(stop)
        print(f"stopped by {name} before any work started; rerun the same command to start.", file=sys.stderr)
        sys.exit(signal_exit_code(name))
