"""The preparation report: JSON, a readable summary and a plot of what each stage kept.

Written next to the dataset (`preparation_report.json`, `.txt`, `.png`). Every figure in
it comes from the per-stage counters the tasks saved, so it describes exactly this run.
"""
from __future__ import annotations

import os
from typing import Any

from research.data.preparation.config import PreparationConfig
from research.data.preparation.decontamination import ContaminationIndex
from research.data.preparation.inputs import SKIP_REASONS, InputSpec


def description(spec: InputSpec, config: PreparationConfig, fingerprint: str,
                contamination: ContaminationIndex | None, lsh: tuple[int, int]) -> dict[str, Any]:
    """What the run was asked to do (known before it starts)."""
    return {
        "input": spec.describe(),
        "skipped_inputs": skipped_inputs(spec, config.max_examples),
        "fingerprint": fingerprint,
        "config": config.to_dict(),
        "minhash_lsh": {"bands": lsh[0], "rows": lsh[1]},
        "decontamination_tasks": [vars(t) for t in contamination.tasks] if contamination else [],
    }


def skipped_inputs(spec: InputSpec, max_examples: int) -> dict[str, dict[str, Any]]:
    """{reason: {"files": count, "examples": first paths}} of the matched files that were not read."""
    skipped: dict[str, dict[str, Any]] = {}
    for reason, path in sorted(spec.skipped):
        entry = skipped.setdefault(reason, {"files": 0, "examples": []})
        entry["files"] += 1
        if len(entry["examples"]) < max_examples:
            entry["examples"].append(path)
    return skipped


def build_report(stages: dict[str, dict[str, Any]], splits: dict[str, int], described: dict[str, Any]) -> dict[str, Any]:
    ordered = [{"stage": name, **counts} for name, counts in stages.items()]
    first, last = ordered[0], ordered[-1]
    return {**described,
            "totals": {"docs_in": first["docs_in"], "docs_out": last["docs_out"],
                       "words_in": first["words_in"], "words_out": last["words_out"],
                       "bytes_in": first["bytes_in"], "bytes_out": last["bytes_out"]},
            "splits": splits, "stages": ordered}


def drop_summary(stages: dict[str, dict[str, Any]]) -> str:
    """'stage: reason=count, ...; stage: ...' for every stage that dropped something, on one line."""
    parts = [f"{name}: " + ", ".join(f"{reason}={count}" for reason, count in counts["dropped"].items())
             for name, counts in stages.items() if counts["dropped"]]
    return "; ".join(parts) or "none"


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:5.1f}%" if whole else "   - "


def summary_text(report: dict[str, Any]) -> str:
    totals = report["totals"]
    lines = [f"Data preparation of {report['input']} (fingerprint {report['fingerprint']})",
             f"kept {totals['docs_out']} of {totals['docs_in']} documents ({_percent(totals['docs_out'], totals['docs_in']).strip()}), "
             f"{totals['words_out']} of {totals['words_in']} words; splits {report['splits']}"]
    for reason, entry in report.get("skipped_inputs", {}).items():
        lines.append(f"skipped {entry['files']} input file(s) as {reason} ({SKIP_REASONS.get(reason, reason)}), "
                     f"e.g. {', '.join(os.path.basename(p) for p in entry['examples'])}")
    lines += ["", f"{'stage':<20}{'docs in':>10}{'docs out':>10}{'kept':>8}{'words in':>12}{'words out':>12}{'rewritten':>10}"]
    for stage in report["stages"]:
        lines.append(f"{stage['stage']:<20}{stage['docs_in']:>10}{stage['docs_out']:>10}"
                     f"{_percent(stage['docs_out'], stage['docs_in']):>8}{stage['words_in']:>12}"
                     f"{stage['words_out']:>12}{stage['rewritten']:>10}")
        for reason, count in sorted(stage["dropped"].items(), key=lambda kv: -kv[1]):
            lines.append(f"    dropped {count:>8}  {reason}")
        for note, count in sorted(stage["noted"].items(), key=lambda kv: -kv[1]):
            lines.append(f"    kept    {count:>8}  {note}")
    lines.append("")
    lines.append("Examples of dropped (and noted) documents, first characters:")
    for stage in report["stages"]:
        for reason, examples in stage["examples"].items():
            for example in examples:
                text = example["text"][:120].replace("\n", "\\n")
                lines.append(f"  [{stage['stage']}/{reason}] {example['origin']}: {text!r}")
    if report["decontamination_tasks"]:
        lines.append("")
        lines.append("Decontamination n-grams per task (n, items indexed / items):")
        for task in report["decontamination_tasks"]:
            lines.append(f"  {task['task']}: n={task['n']}, {task['items_indexed']}/{task['items']}")
    return "\n".join(lines) + "\n"


def plot_stages(report: dict[str, Any], path: str) -> None:
    """Documents and words remaining after each stage, as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["input"] + [s["stage"] for s in report["stages"]]
    docs = [report["totals"]["docs_in"]] + [s["docs_out"] for s in report["stages"]]
    words = [report["totals"]["words_in"]] + [s["words_out"] for s in report["stages"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, values, label in zip(axes, (docs, words), ("documents", "words")):
        bars = ax.bar(range(len(names)), values, color="tab:blue")
        for bar, value in zip(bars, values):
            share = f"{100 * value / values[0]:.0f}%" if values[0] else ""
            ax.annotate(share, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
        ax.set_ylabel(f"{label} kept")
        ax.set_title(f"{label} remaining after each stage")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def write_report(directory: str, report: dict[str, Any]) -> None:
    import json
    with open(os.path.join(directory, "preparation_report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    with open(os.path.join(directory, "preparation_report.txt"), "w", encoding="utf-8") as f:
        f.write(summary_text(report))
    plot_stages(report, os.path.join(directory, "preparation_report.png"))
