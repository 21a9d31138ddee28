"""Markdown tables of the report: the paper's Table 1 (H, L, A per percentile, with Wilcoxon p-values) and timing.

The inputs are the JSON fragments :func:`cfattr_monai.report.evaluate.evaluate_attribution` and
``scripts/benchmark.py`` write, so a report can be rebuilt from saved files without rerunning anything.

Example:
    >>> s = {"mean": 1.0, "std": 0.5, "n": 3, "ci95": [0.0, 2.0]}
    >>> fragment = {"ours": {"H": s, "L": s, "A": s}, "gradcam": {"P50": {"H": s, "L": s, "A": s}},
    ...             "wilcoxon_p": {"gradcam": {"P50": {"H": 0.5, "L": 0.5, "A": 0.5}}}}
    >>> print(table1(fragment, baselines=("gradcam",)).splitlines()[2])
    | P | H ours | H Grad-CAM | L ours | L Grad-CAM |
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from cfattr_monai.metrics.localization import METRIC_DIRECTIONS

__all__ = ["BASELINE_NAMES", "significance_table", "table1", "timing_table", "verdicts"]

#: Display names of the baselines, as in the paper's Table 1 columns.
BASELINE_NAMES = {"gradcam": "Grad-CAM", "saliency": "saliency"}
#: Significance level of the acceptance criterion (the paper reports all p < 1e-2).
ALPHA = 0.01


def _mean_std(summary: Mapping) -> str:
    if summary["n"] == 0 or math.isnan(summary["mean"]):
        return "–"
    return f"{summary['mean']:.3g} ± {summary['std']:.2g}"


def _mean(summary: Mapping) -> str:
    return "–" if summary["n"] == 0 or math.isnan(summary["mean"]) else f"{summary['mean']:.3g}"


def _percentiles(fragment: Mapping, baselines: Sequence[str]) -> list[str]:
    return sorted(fragment[baselines[0]], key=lambda p: int(p.lstrip("P")))


def table1(fragment: Mapping, baselines: Sequence[str] = ("gradcam", "saliency")) -> str:
    """The paper's Table 1: top H (mean ± std) and L (mean) per percentile P; bottom A (mean ± std).

    "Ours" is binary already, so its value repeats on every row, as in the paper.
    """
    names = [BASELINE_NAMES.get(b, b) for b in baselines]
    percentiles = _percentiles(fragment, baselines)
    ours = fragment["ours"]
    n = ours["H"]["n"]
    top = [
        f"Hausdorff distance H (px, lower is better) and weak localization L (higher is better), n = {n} lesion images",
        "",
        "| P | H ours | " + " | ".join(f"H {x}" for x in names)
        + " | L ours | " + " | ".join(f"L {x}" for x in names) + " |",
        "|---" * (3 + 2 * len(names)) + "|",
    ]
    for p in percentiles:
        h = [_mean_std(fragment[b][p]["H"]) for b in baselines]
        lo = [_mean(fragment[b][p]["L"]) for b in baselines]
        top.append(f"| {p.lstrip('P')} | {_mean_std(ours['H'])} | " + " | ".join(h) + f" | {_mean(ours['L'])} | "
                   + " | ".join(lo) + " |")
    bottom = [
        "",
        f"Area ratio A = |M̂| / |{'image' if fragment.get('settings', {}).get('area_reference') == 'image' else 'organ'}|"
        " (lower is better)",
        "",
        "| P | A ours | " + " | ".join(f"A {x}" for x in names) + " |",
        "|---" * (2 + len(names)) + "|",
    ]
    for p in percentiles:
        bottom.append(f"| {p.lstrip('P')} | {_mean_std(ours['A'])} | "
                      + " | ".join(_mean_std(fragment[b][p]["A"]) for b in baselines) + " |")
    return "\n".join(top + bottom)


def verdicts(fragment: Mapping, baselines: Sequence[str] = ("gradcam", "saliency")) -> dict[str, dict[str, dict]]:
    """Per baseline, percentile and metric: ``{"p", "better", "significant"}`` — is ours better in the metric's
    direction (:data:`~cfattr_monai.metrics.localization.METRIC_DIRECTIONS`) and is the Wilcoxon p below 0.01?"""
    result: dict[str, dict[str, dict]] = {}
    for b in baselines:
        for p, metrics in fragment[b].items():
            for metric, direction in METRIC_DIRECTIONS.items():
                ours, theirs = fragment["ours"][metric]["mean"], metrics[metric]["mean"]
                better = ours < theirs if direction == "lower" else ours > theirs
                p_value = fragment["wilcoxon_p"][b][p][metric]
                result.setdefault(b, {}).setdefault(p, {})[metric] = {
                    "p": p_value, "better": bool(better), "significant": bool(better and p_value < ALPHA)
                }
    return result


def significance_table(fragment: Mapping, baselines: Sequence[str] = ("gradcam", "saliency")) -> str:
    """Wilcoxon signed-rank p-values, ours vs each baseline per metric and P; ✓ = ours better with p < 0.01."""
    marks = verdicts(fragment, baselines)
    names = [BASELINE_NAMES.get(b, b) for b in baselines]
    columns = [f"{m} vs {x}" for m in METRIC_DIRECTIONS for x in names]
    lines = [
        "Wilcoxon signed-rank p (two-sided, paired per image); ✓ ours better with p < 0.01, ✗ otherwise",
        "",
        "| P | " + " | ".join(columns) + " |",
        "|---" * (1 + len(columns)) + "|",
    ]
    for p in _percentiles(fragment, baselines):
        cells = []
        for metric in METRIC_DIRECTIONS:
            for b in baselines:
                v = marks[b][p][metric]
                cells.append(f"{v['p']:.2g} {'✓' if v['significant'] else '✗'}")
        lines.append(f"| {p.lstrip('P')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(records: Sequence[Mapping]) -> str:
    """One row per benchmark record (``scripts/benchmark.py`` JSON): maps/s of each method and ours' ratios."""
    methods = ["ours", "ours_with_counterfactual", "gradcam", "saliency", "saliency_batched", "iterative",
               "classifier_forward"]
    ratios = ["ours_vs_gradcam", "ours_vs_saliency", "ours_vs_saliency_batched", "ours_vs_iterative", "ours_vs_forward"]
    lines = [
        "| backbone | size | batch | device | " + " | ".join(methods) + " | " + " | ".join(ratios) + " |",
        "|---" * (4 + len(methods) + len(ratios)) + "|",
    ]
    fmt = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731 - local formatter
    for r in records:
        size = "×".join(str(s) for s in r["size"])
        lines.append(
            f"| {r.get('backbone', '?')} | {size} | {r['batch']} | {r['device']} | "
            + " | ".join(fmt(r["maps_per_s"].get(m)) for m in methods) + " | "
            + " | ".join(fmt(r["ratios"].get(k)) for k in ratios) + " |"
        )
    return "\n".join(lines)
