"""Where a compiled step's time goes on XLA:CPU: a jax.profiler trace mapped onto its HLO.

    from experiments.benchmarks import step_profile
    shares = step_profile.profile(run_step, compiled.as_text(), steps=2, log_dir="/tmp/trace")
    print(step_profile.format_breakdown(shares))

The XLA:CPU thunk runtime names each trace event after the HLO instruction it runs
(`ynn_fusion.68`, `copy_bitcast_fusion.7`, ...), so the events of a trace of `compiled`
map onto `compiled.as_text()`: each instruction is put in a category (dots, with the
LM head and attention apart; copies and transposes; broadcasts; reductions; other
elementwise fusions) and a side (forward, backward, the rest: optimizer update, gradient
norm) read from its op_name metadata. Shares of summed event time, not of wall time: the
figures stay meaningful on a loaded machine, where wall time is mostly waiting.

Caveat: dots run by XLA's own Eigen path (when YNNPACK fusions are off,
--xla_cpu_experimental_ynn_fusion_type=) execute asynchronously in the intra-op pool and
their events cover only the dispatch; the default YNNPACK dot fusions are timed in full.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from typing import Any, Callable

import jax

# HLO instruction names (dot.3, ynn_fusion.68, wrapped_broadcast); other events are Python
# frames ($...), runtime bookkeeping (ThunkExecutor::Execute, ...) and "end: <name>" markers.
_INSTRUCTION_LIKE = re.compile(r"[a-z][\w.-]*")


def trace_op_times(run_step, steps: int, log_dir: str) -> dict[str, float]:
    """Seconds per step spent in each named trace event, over `steps` calls of run_step()."""
    jax.profiler.start_trace(log_dir)
    try:
        for _ in range(steps):
            run_step()
    finally:
        jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(log_dir, "**", "*.trace.json.gz"), recursive=True),
                  key=os.path.getmtime)[-1]
    totals: collections.Counter = collections.Counter()
    for event in json.load(gzip.open(path))["traceEvents"]:
        if event.get("ph") == "X":
            totals[event["name"]] += event.get("dur", 0) * 1e-6 / steps
    return dict(totals)


def _instructions(hlo_text: str) -> dict[str, str]:
    """Instruction name -> the rest of its line, and fused computation name -> its body."""
    lines: dict[str, str] = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = (.*)$", line)
        if match:
            lines.setdefault(match.group(1), match.group(2))
    return lines


def _computations(hlo_text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^%?([\w.-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S | re.M)}


def categorize(name: str, instructions: dict[str, str], computations: dict[str, str]) -> tuple[str, str] | None:
    """(category, side) of the HLO instruction `name`; None when it is not one."""
    rhs = instructions.get(name)
    if rhs is None:
        return None
    opcode = re.match(r"(?:\(.*?\)|\S+)\s+([\w-]+)\(", rhs)
    opcode = opcode.group(1) if opcode else ""
    meta = re.search(r'op_name="([^"]*)"', rhs)
    meta = meta.group(1) if meta else ""
    called = re.search(r"calls=%?([\w.-]+)", rhs)
    body = computations.get(called.group(1), "") if called else ""
    # A YNNPACK / XNNPACK / oneDNN fusion is a dot only when its body holds one: XLA hands them
    # reductions and elementwise chains too (40 of them, 13% of the "dots" of a D256 step).
    library = "__ynn_fusion" in rhs or "__xnn_fusion" in rhs or "onednn" in rhs
    if opcode in ("dot", "convolution") or re.search(r" (dot|convolution)\(", body) or (library and not body):
        category = "dots"
        if ".attend/" in meta or "lm_head" in meta:
            category = "dots: LM head"
        elif "/attention/" in meta and ("BKGTS" in meta or "->BTKGd" in meta):
            category = "dots: attention scores and values"
    elif opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")):
        category = "copies and transposes"  # XLA names a fusion after its ops: copy_bitcast_fusion, ...
    elif opcode == "broadcast" or name.startswith("wrapped_broadcast"):
        category = "broadcasts (buffer fills)"
    elif "reduce" in name or re.search(r" reduce\(", body):
        category = "reductions"
    else:
        category = "other elementwise fusions"
    side = "backward" if "transpose(jvp" in meta else "forward" if "jvp(" in meta else "rest (optimizer, norms, fills)"
    return category, side


def matmul_library(hlo_text: str) -> str:
    """Which library runs the compiled program's dots: XLA:CPU's library fusions (YNNPACK,
    XNNPACK, oneDNN; counted as fusions) or its own Eigen dot thunks (dots outside them)."""
    computations = _computations(hlo_text)
    counts = collections.Counter()
    in_library = set()
    for line in hlo_text.splitlines():
        kind = re.search(r'"kind":"__(ynn|xnn|onednn)_fusion"', line)
        called = re.search(r"calls=%?([\w.-]+)", line)
        if kind and called:
            counts[{"ynn": "YNNPACK", "xnn": "XNNPACK", "onednn": "oneDNN"}[kind.group(1)]] += 1
            in_library.add(called.group(1))
    counts["Eigen"] = sum(len(re.findall(r" dot\(", body)) for name, body in computations.items()
                          if name not in in_library)
    return ", ".join(f"{name} {count}" for name, count in counts.items() if count) or "no dots"


def breakdown(hlo_text: str, op_times: dict[str, float]) -> dict[str, Any]:
    """Seconds per step by category and by (category, side), and the events left unmatched."""
    instructions, computations = _instructions(hlo_text), _computations(hlo_text)
    by_category: collections.Counter = collections.Counter()
    by_side: collections.Counter = collections.Counter()
    unmatched: collections.Counter = collections.Counter()
    for name, seconds in op_times.items():
        if not _INSTRUCTION_LIKE.fullmatch(name):
            continue
        found = categorize(name, instructions, computations)
        if found is None:
            unmatched[name] += seconds
            continue
        by_category[found[0]] += seconds
        by_side[" / ".join(found)] += seconds
    return {"total_seconds": sum(by_category.values()), "by_category": dict(by_category.most_common()),
            "by_side": dict(by_side.most_common()), "unmatched_seconds": sum(unmatched.values())}


def profile(run_step: Callable[[], Any], hlo_text: str, *, steps: int, log_dir: str) -> dict[str, Any]:
    """Trace `steps` calls of run_step() (which runs and waits for the compiled program whose
    optimized HLO is `hlo_text`) and break the time down (see breakdown)."""
    return breakdown(hlo_text, trace_op_times(run_step, steps, log_dir))


def format_breakdown(result: dict[str, Any], top_sides: int = 10) -> str:
    total = result["total_seconds"]
    lines = [f"op time {total * 1e3:.0f} ms/step summed over trace events "
             f"(+{result['unmatched_seconds'] * 1e3:.0f} ms not matched to an HLO instruction)"]
    lines += [f"  {name:36s} {s * 1e3:8.0f} ms  {100 * s / total:5.1f}%" for name, s in result["by_category"].items()]
    lines += [f"    {name:56s} {s * 1e3:8.0f} ms" for name, s in list(result["by_side"].items())[:top_sides]]
    return "\n".join(lines)
