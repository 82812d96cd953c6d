"""The emergence study's report (experiments/emergence.py, step 4): from the evaluated rows,
results.{json,csv}, summary.{json,csv} (each metric across sizes at the end of training, with
BIG-bench linearity and breakthroughness), the mirage and transition tables, the mirage's
verdicts by rule (mirage_verdicts.{json,csv}: across sizes and along training per size),
plots and report.md under <workdir>/report."""
from __future__ import annotations

import os
from typing import Any, Callable

import ml_collections

from research.atomic_files import write_text_atomically

# The metrics whose shapes across sizes the mirage is read from: exact match and its continuous kin.
MIRAGE_SHAPE_METRICS = ("exact_match", "teacher_forced_accuracy", "target_log_prob", "token_edit_distance")


def write_report(config: ml_collections.ConfigDict, rows: list[dict[str, Any]], workdir: str) -> dict[str, str]:
    """results, summary (shape metrics across sizes), mirage and transition tables, plots and
    report.md under <workdir>/report."""
    from research.evaluation.plots import plot_grid
    from research.evaluation.results_table import write_rows
    from research.evaluation.study_report import (curve_summary, mirage_table, noisy_curve_summary,
                                                  transition_shapes, transition_table)

    report_dir = os.path.join(workdir, "report")
    rows_with_items, rows = rows, [{k: v for k, v in r.items() if k != "items"} for r in rows]
    # A task both tracked at every checkpoint (eval.tasks) and scored at the end (final_tasks) has
    # two rows at the final step: the summaries across sizes take the one with more items, the
    # curves along training the one with the same items as the other checkpoints.
    finals_with_items = one_row_per_setting([r for r in rows_with_items if r["final"]], most_items=True)
    finals = [{k: v for k, v in r.items() if k != "items"} for r in finals_with_items]
    along_with_items = one_row_per_setting(rows_with_items, most_items=False)
    # Shape metrics with item-bootstrap intervals and the noise rule where per-item values
    # exist (every metric of emergence_metrics.curve_shape_with_noise); the paper's bare
    # values for the rest.
    summary = noisy_curve_summary(finals_with_items, scale="params_non_embedding", group_by=("task", "num_shots"),
                                  metrics=tuple(config.report.metrics))
    covered = {(r["task"], r["num_shots"], r["metric"]) for r in summary}
    # A metric without per-item values (evaluations cached before it had them) has no noise
    # floor: its linearity and breakthroughness are left blank, the paper's bare values kept
    # under paper_*, so no shape is reported that noise alone could give.
    summary += [{**r, "linearity": None, "breakthroughness": None}
                for r in curve_summary(finals, scale="params_non_embedding", group_by=("task", "num_shots"),
                                       metrics=tuple(config.report.metrics))
                if (r["task"], r["num_shots"], r["metric"]) not in covered]
    final_tasks = set(config.eval.get("final_tasks", ()))
    mirage = mirage_table([r for r in finals_with_items if r["task"] in final_tasks])
    # The mirage's shapes across sizes, over report.mirage_sizes (one architecture) where set.
    mirage_sizes = set(config.report.get("mirage_sizes", ()) or config.sizes)
    mirage_finals = [r for r in finals_with_items if r["task"] in final_tasks and r["size"] in mirage_sizes]
    mirage_shapes = noisy_curve_summary(mirage_finals, scale="params_non_embedding", group_by=("task", "num_shots"),
                                        metrics=MIRAGE_SHAPE_METRICS) if mirage else []
    covered = {(r["task"], r["num_shots"], r["metric"]) for r in mirage_shapes}
    # As in the summary: rows cached without per-item values keep the paper's bare values only.
    mirage_shapes += [{**r, "linearity": None, "breakthroughness": None}
                      for r in curve_summary([{k: v for k, v in r.items() if k != "items"} for r in mirage_finals],
                                             scale="params_non_embedding", group_by=("task", "num_shots"),
                                             metrics=MIRAGE_SHAPE_METRICS)
                      if mirage and (r["task"], r["num_shots"], r["metric"]) not in covered]
    transition_tasks = _transition_tasks(config)
    # Exact match beside p^L at every checkpoint of the transition tasks that have answers of
    # several tokens: the mirage along training compute, beside the one across sizes.
    mirage_along = mirage_table([r for r in along_with_items if r["task"] in transition_tasks])
    transition = [row for task in transition_tasks
                  for row in transition_table(along_with_items, task, ("exact_match", "teacher_forced_accuracy"))]
    shapes = [row for task in transition_tasks
              for row in transition_shapes(along_with_items, task,
                                           ("exact_match", "teacher_forced_accuracy", "teacher_forced_prob"))]
    # The whole config, for experiments.emergence_seeds to tell runs of one study from others.
    paths = {"results": write_rows(rows, os.path.join(report_dir, "results"),
                                   metadata={"config": config.to_dict()})["csv"],
             "summary": write_rows(summary, os.path.join(report_dir, "summary"))["csv"],
             "mirage": write_rows(mirage, os.path.join(report_dir, "mirage"))["csv"],
             "mirage_shapes": write_rows(mirage_shapes, os.path.join(report_dir, "mirage_shapes"))["csv"],
             "transition": write_rows(transition, os.path.join(report_dir, "transition"))["csv"],
             "transition_shapes": write_rows(shapes, os.path.join(report_dir, "transition_shapes"))["csv"],
             "mirage_along_training": write_rows(mirage_along, os.path.join(report_dir, "mirage_along_training"))["csv"]}
    verdicts = mirage_verdicts(mirage, mirage_shapes, shapes)
    paths["mirage_verdicts"] = write_rows(verdicts, os.path.join(report_dir, "mirage_verdicts"))["csv"]
    metrics = tuple(config.report.plot_metrics)
    setting = lambda r: f"{r['task']} {r['num_shots']}-shot"
    base = lambda r: r["task"].removesuffix("_cot")
    paths["vs_params"] = plot_grid(finals, x="params_non_embedding", metrics=metrics, panel=lambda r: "",
                                   series=setting, path=os.path.join(report_dir, "vs_params.png"),
                                   x_label="non-embedding parameters")
    along = [{k: v for k, v in r.items() if k != "items"} for r in along_with_items]  # one point per checkpoint
    paths["vs_compute"] = plot_grid(along, x="compute_flops", metrics=metrics, panel=setting,
                                    series=lambda r: r["size"], path=os.path.join(report_dir, "vs_compute.png"),
                                    x_label="training compute (FLOPs)")
    paired = {base(r) for r in finals if r["chain_of_thought"]} & {base(r) for r in finals if not r["chain_of_thought"]}
    if paired:
        paths["direct_vs_cot"] = plot_grid(
            [r for r in finals if base(r) in paired], x="params_non_embedding", metrics=metrics,
            panel=lambda r: f"{base(r)} {r['num_shots']}-shot",
            series=lambda r: "chain-of-thought" if r["chain_of_thought"] else "direct",
            path=os.path.join(report_dir, "direct_vs_cot.png"), x_label="non-embedding parameters")
    paths["zero_vs_few_shot"] = plot_grid(finals, x="params_non_embedding", metrics=metrics,
                                          panel=lambda r: r["task"], series=lambda r: f"{r['num_shots']}-shot",
                                          path=os.path.join(report_dir, "zero_vs_few_shot.png"),
                                          x_label="non-embedding parameters")
    if mirage:
        paths["mirage_plot"] = plot_grid(mirage, x="params_non_embedding", metrics=("exact_match", "p_to_the_L", "p"),
                                         panel=lambda r: "", series=lambda r: r["task"],
                                         path=os.path.join(report_dir, "mirage.png"), x_label="non-embedding parameters",
                                         title="exact match vs p^L (teacher-forced per-token accuracy p)")
    if mirage_along:
        paths["mirage_along_training_plot"] = plot_grid(
            mirage_along, x="tokens", metrics=("exact_match", "p_to_the_L", "p"), panel=lambda r: r["task"],
            series=_size_series(mirage_along), path=os.path.join(report_dir, "mirage_along_training.png"),
            x_label="training tokens", title="exact match vs p^L along training")
    if transition:
        paths["transition_plot"] = plot_grid(transition, x="tokens", metrics=("exact_match", "teacher_forced_accuracy"),
                                             panel=lambda r: r["task"], series=_size_series(transition),
                                             path=os.path.join(report_dir, "transition.png"),
                                             x_label="training tokens", title="along training")
    paths["report"] = os.path.join(report_dir, "report.md")
    write_text_atomically(paths["report"], _report_markdown(config, summary, mirage, mirage_shapes, transition,
                                                            shapes, finals, verdicts))
    return paths


def mirage_verdicts(mirage: list[dict[str, Any]], mirage_shapes: list[dict[str, Any]],
                    transition_shapes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """study_report.sharpening_verdict over the final tasks' answer lengths: across sizes (the
    mirage_shapes of report.mirage_sizes; p must rise at every size step) and along training per
    size (p must end above where it started). Rows: axis, size, num_shots and the verdict."""
    from research.evaluation.study_report import sharpening_verdict

    out = []
    for shots in sorted({r["num_shots"] for r in mirage}):
        lengths = {r["task"]: r["answer_tokens"] for r in mirage if r["num_shots"] == shots}
        across = sharpening_verdict([r for r in mirage_shapes if r["num_shots"] == shots], lengths)
        if across:
            out.append({"axis": "across sizes", "size": "", "num_shots": shots, **across})
        for size in dict.fromkeys(r["size"] for r in transition_shapes):
            curves = [r for r in transition_shapes if r["size"] == size and r["num_shots"] == shots]
            along = sharpening_verdict(curves, lengths, premise="net")
            if along:
                out.append({"axis": "along training", "size": size, "num_shots": shots, **along})
    return out


def breakthroughness_pair(pair: list[float | None]) -> str:
    """A verdict's (shortest, longest) breakthroughness as "B1 -> B2" ("-": within item noise)."""
    return " -> ".join("-" if b is None else f"{b:.3g}" for b in pair)


def one_row_per_setting(rows: list[dict[str, Any]], *, most_items: bool) -> list[dict[str, Any]]:
    """One row per (size, step, task, num_shots): the one with the most (or fewest) examples."""
    chosen: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["size"], row["step"], row["task"], row["num_shots"])
        # Strictly more (or fewer): on a tie the first row, the one evaluated at every checkpoint.
        if key not in chosen or (row["num_examples"] > chosen[key]["num_examples"] if most_items
                                 else row["num_examples"] < chosen[key]["num_examples"]):
            chosen[key] = row
    return [row for row in rows if chosen[(row["size"], row["step"], row["task"], row["num_shots"])] is row]


def _size_series(rows: list[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
    """A curve along training per size, and per shots where rows have several (eval.shots): one
    line through a size's 0-shot and k-shot points zig-zagged between them."""
    if len({r["num_shots"] for r in rows}) > 1:
        return lambda r: f"{r['size']} {r['num_shots']}-shot"
    return lambda r: r["size"]


def _transition_tasks(config: ml_collections.ConfigDict) -> list[str]:
    """report.transition_task: one task name or several, each tabled and plotted along training."""
    tasks = config.report.get("transition_task") or ()
    return [tasks] if isinstance(tasks, str) else list(tasks)


def _prediction_section(mirage: list[dict[str, Any]], predicted: str, beside: str, intro: str) -> str:
    """The report's table of exact match against one more of its predictions (study_report.mirage_table's
    `predicted` column and its paired difference), with `beside` shown too; empty where no row has it."""
    rows = [{**r, "em_minus": r[f"exact_match_minus_{predicted}"],
             "em_minus_interval": r[f"exact_match_minus_{predicted}_interval"],
             "agrees": r[f"exact_match_agrees_with_{predicted}"]} for r in mirage if predicted in r]
    if not rows:
        return ""
    from research.evaluation.results_table import format_table
    table = format_table(_interval_text(rows, ["exact_match", beside, predicted, "em_minus"]),
                         ["task", "size", "exact_match", beside, predicted, "em_minus", "agrees"])
    return (f"\n{intro} with its paired 80% interval; agrees as above, in {sum(r['agrees'] for r in rows)} of "
            f"{len(rows)} rows (mirage.csv).\n\n```\n{table}\n```\n")


def _interval_text(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Rows with each `name` shown as 'value [low, high]' (its item-bootstrap 80% interval)."""
    out = []
    for row in rows:
        shown = dict(row)
        for name in names:
            interval = row.get(f"{name}_interval")
            if name in row and row[name] is not None:
                shown[name] = f"{row[name]:.4g}" + (f" [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else "")
        out.append(shown)
    return out


def _report_markdown(config, summary, mirage, mirage_shapes, transition, transition_shapes, finals,
                     mirage_rules) -> str:
    from research.evaluation.emergence_metrics import NOISE_Z
    from research.evaluation.results_table import format_table
    from research.evaluation.study_report import JUMP_RATIO, jump_verdicts

    shapes = format_table(_interval_text(summary, ["total_improvement", "linearity", "breakthroughness"]),
                          ["task", "num_shots", "metric", "values", "total_improvement", "above_noise", "linearity",
                           "breakthroughness", "paper_linearity", "paper_breakthroughness"])
    text = (f"# Emergence study\n\nSizes: {', '.join(config.sizes)}; {config.train.num_steps} steps of "
            f"{config.train.batch_size} x {config.train.seq_len} tokens each. Intervals: 80% item bootstrap. "
            f"paper_linearity / paper_breakthroughness: Srivastava et al. 2022's I / RootMeanSquare and "
            f"I / RootMedianSquare of the steps between consecutive sizes (App. B; the formulas as restated "
            f"by secondary sources, the appendix's own text not checked). linearity / breakthroughness: the "
            f"same with each squared step floored at its bootstrap variance and at the square of the mean's "
            f"resolution (the item scores' grid spacing / items: 1 / items for 0/1 scores), shown only "
            f"where the curve's range exceeds what item noise gives a flat curve (the range of the "
            f"bootstrap deviations, mean + {NOISE_Z:g} standard deviations) "
            f"(research/evaluation/emergence_metrics.py)."
            f"\n\n## Across sizes (end of training), values ordered by size\n\n```\n{shapes}\n```\n")
    if mirage:
        shown = [{**r, "em_minus_pL": r["exact_match_minus_p_to_the_L"],
                  "em_minus_pL_interval": r["exact_match_minus_p_to_the_L_interval"],
                  "agrees": r["exact_match_agrees_with_p_to_the_L"]} for r in mirage]
        table = format_table(_interval_text(shown, ["exact_match", "p", "p_to_the_L", "em_minus_pL", "target_log_prob",
                                                    "token_edit_distance"]),
                             ["task", "size", "answer_tokens", "items", "exact_match", "p_to_the_L", "em_minus_pL",
                              "agrees", "p", "target_log_prob", "token_edit_distance"])
        text += ("\n## The mirage: exact match beside p^L (p = teacher-forced per-token accuracy: each item's "
                 "share of right answer tokens, averaged over items (the stop after the answer is not one of them; "
                 "the next table counts it); L = answer_tokens, the items' mean count of those tokens; p^L = the "
                 "mean over items of p raised to each item's own L (answers differ in length: a carry adds a digit), "
                 "its interval resampling the items with their lengths; em_minus_pL = exact match - p^L, its "
                 "80% interval from the same item resamples; agrees: that interval contains 0 (to within one "
                 "item, 1 / items), in "
                 f"{sum(r['agrees'] for r in shown)} of {len(shown)} rows. Overlapping intervals of the two are no "
                 "test of agreement: both come from the same items. Below 0 the wrong tokens are spread over more "
                 "items than independent errors at one accuracy p would spread them: dependent errors, or "
                 "positions of unequal accuracy (independent errors at p_1..p_L give exact match p_1...p_L <= "
                 "(mean p)^L), which these per-item accuracies cannot tell apart; above 0 they gather on fewer)"
                 f"\n\n```\n{table}\n```\n")
        text += _prediction_section(
            mirage, "p_to_the_L_times_end", "end_accuracy",
            "With the end decision (exact match also needs greedy decoding to stop right after the answer: eos or "
            "the stop string next): end_accuracy q = the items' share where, given the gold answer, it does; p^L q, "
            "exact match's prediction for independent decisions, all of them; em_minus = exact match - p^L q")
        text += _prediction_section(
            mirage, "p_positions_product", "p_to_the_L",
            "By position: p_positions_product = the mean over items of p_1...p_L, p_j the items' share right at "
            "their j-th answer token (teacher-forced): exact match's prediction for independent errors at each "
            "position's own accuracy. Where exact match is below p^L and agrees with this, positions of unequal "
            "accuracy explain the gap; a gap left here is dependence between the errors. em_minus = exact match - "
            "that product")
        mirage_sizes = tuple(config.report.get("mirage_sizes", ()) or config.sizes)
        table = format_table(_interval_text(mirage_shapes, ["total_improvement", "breakthroughness"]),
                             ["task", "metric", "values", "total_improvement", "above_noise", "linearity",
                              "breakthroughness"])
        text += (f"\nShape across sizes ({', '.join(mirage_sizes)}: report.mirage_sizes), per answer length (the "
                 "mirage predicts exact match's breakthroughness growing with L while the per-digit metrics stay "
                 f"smooth; read the values; mirage_shapes.csv):\n\n```\n{table}\n```\n")
    if transition:
        table = format_table(_interval_text(transition, ["exact_match", "teacher_forced_accuracy"]),
                             ["task", "size", "num_shots", "step", "tokens", "exact_match", "teacher_forced_accuracy"])
        text += (f"\n## Along training ({', '.join(dict.fromkeys(r['task'] for r in transition))})\n\n"
                 f"```\n{table}\n```\n\nExact match beside p^L at every checkpoint: mirage_along_training.csv "
                 "and .png.\n")
    if transition_shapes:
        table = format_table(_interval_text(transition_shapes, ["breakthroughness"]),
                             ["task", "size", "num_shots", "metric", "first", "last", "largest_step", "largest_step_se", "at_step",
                              "jump_ratio", "above_noise", "jump", "linearity", "breakthroughness"])
        text += ("\nShape along training, per size (steps as the scale axis; largest_step_se: bootstrap standard "
                 "error of the largest rise between consecutive checkpoints; jump_ratio: that rise over the root-"
                 "median-square rise, each squared rise floored at the square of the mean's resolution r (the item "
                 "scores' grid spacing / items: 1 / items for exact match, 1 / (L items) for per-token accuracy), so "
                 "a curve flat for most checkpoints has jump_ratio = its largest rise / r; jump: above item noise and "
                 f"jump_ratio > {JUMP_RATIO:g}, above training noise, study_report.JUMP_RATIO):"
                 f"\n\n```\n{table}\n```\n")
        verdicts = jump_verdicts(transition_shapes)
        if verdicts:
            table = format_table(verdicts, list(verdicts[0]))
            text += ("\nWhere exact match jumps along training: \"genuine\" when the per-token (teacher-forced) "
                     "accuracy and probability of the right token jump too, within one checkpoint of it; "
                     "\"mirage\" otherwise (study_report.jump_verdicts):"
                     f"\n\n```\n{table}\n```\n")
    if mirage_rules:
        along = [v for v in mirage_rules if v["axis"] == "along training"]
        across = [v for v in mirage_rules if v["axis"] == "across sizes"]
        shown = [{**v, "exact_match_B": breakthroughness_pair(v["exact_match_breakthroughness"]),
                  "p_B": breakthroughness_pair(v["teacher_forced_accuracy_breakthroughness"]),
                  "p_improves": v["teacher_forced_accuracy_improves"]} for v in mirage_rules]
        table = format_table(shown, ["axis", "size", "num_shots", "shortest", "longest", "p_improves",
                                     "exact_match_B", "p_B", "mirage"])
        curves = "sizes" if len({v["num_shots"] for v in along}) <= 1 else "(size, shots) curves"
        text += (f"\n## The mirage by rule: across sizes {'shown' if any(v['mirage'] for v in across) else 'not shown'}"
                 f"; along training at {sum(v['mirage'] for v in along)} of {len(along)} {curves}\n\n"
                 "Exact match's breakthroughness B at the longest answer above the shortest's (80% intervals apart) "
                 "while per-digit accuracy p improves (at every size step across sizes; from first to last "
                 "checkpoint along training) and its B does not sharpen so (study_report.sharpening_verdict; "
                 f"mirage_verdicts.csv):\n\n```\n{table}\n```\n")
    finals_table = format_table(finals, ["size", "params_non_embedding", "task", "num_shots", *config.report.metrics])
    return text + f"\n## Final checkpoints\n\n```\n{finals_table}\n```\n"
