"""Markdown tables of the report: the paper's Table 1 (H, L, A per percentile, with Wilcoxon p-values) and timing.

The inputs are the JSON fragments :func:`cfattr_monai.report.evaluate.evaluate_attribution` and
``scripts/benchmark.py`` write, so a report can be rebuilt from saved files without rerunning anything.

Example:
    >>> s = {"mean": 1.0, "std": 0.5, "n": 3, "ci95": [0.0, 2.0]}
    >>> fragment = {"ours": {"H": s, "L": s, "A": s}, "gradcam": {"P50": {"H": s, "L": s, "A": s}},
    ...             "wilcoxon_p": {"gradcam": {"P50": {"H": 0.5, "L": 0.5, "A": 0.5}}},
    ...             "wilcoxon_favours_ours": {"gradcam": {"P50": {"H": True, "L": True, "A": True}}}}
    >>> print(table1(fragment, baselines=("gradcam",)).splitlines()[2])
    | P | H ours | H Grad-CAM | L ours | L Grad-CAM |
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from cfattr_monai.metrics.localization import METRIC_DIRECTIONS

__all__ = [
    "BASELINE_NAMES",
    "TIMING_METHODS",
    "interval_table",
    "markdown_table",
    "significance_table",
    "table1",
    "timing_table",
    "verdicts",
]

#: Display names of the baselines, as in the paper's Table 1 columns.
BASELINE_NAMES = {"gradcam": "Grad-CAM", "saliency": "saliency"}
#: The methods ``scripts/benchmark.py`` times, in the order of the timing tables, with what each one runs.
TIMING_METHODS = {
    "ours": "the attribution network's map, one forward pass",
    "ours_with_counterfactual": "map + counterfactual π(M̂) by the inpainter + both scores",
    "gradcam": "MONAI GradCAM, frozen weights (gradient through the input)",
    "gradcam_trainable": "MONAI GradCAM, weights as loaded (weight gradients too)",
    "gradcam_head_only": "the same Grad-CAM map, gradient through the head only",
    "saliency": "MONAI VanillaGrad, one image at a time",
    "saliency_batched": "input gradient for the whole batch, frozen weights",
    "iterative": "Major et al. 2020, one optimization per image to its own stop",
    "classifier_forward": "the bare classifier forward pass",
}
#: Significance level of the acceptance criterion (the paper reports all p < 1e-2).
ALPHA = 0.01


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: ``header``, the separator, one line per row of cells.

    Example:
        >>> for line in markdown_table(["a", "b"], [["1", "2"]]):
        ...     print(line)
        | a | b |
        |---|---|
        | 1 | 2 |
    """
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


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
        *markdown_table(
            ["P", "H ours", *(f"H {x}" for x in names), "L ours", *(f"L {x}" for x in names)],
            ([p.lstrip("P"), _mean_std(ours["H"]), *(_mean_std(fragment[b][p]["H"]) for b in baselines),
              _mean(ours["L"]), *(_mean(fragment[b][p]["L"]) for b in baselines)] for p in percentiles),
        ),
    ]
    bottom = [
        "",
        f"Area ratio A = |M̂| / |{'image' if fragment.get('settings', {}).get('area_reference') == 'image' else 'organ'}|"
        " (lower is better)",
        "",
        *markdown_table(
            ["P", "A ours", *(f"A {x}" for x in names)],
            ([p.lstrip("P"), _mean_std(ours["A"]), *(_mean_std(fragment[b][p]["A"]) for b in baselines)]
             for p in percentiles),
        ),
    ]
    return "\n".join(top + bottom)


def _interval(summary: Mapping) -> str:
    low, high = summary["ci95"]
    return "–" if summary["n"] == 0 or math.isnan(low) else f"[{low:.3g}, {high:.3g}]"


def interval_table(fragment: Mapping, baselines: Sequence[str] = ("gradcam", "saliency")) -> str:
    """The 95 % confidence intervals of Table 1's means (``ci95`` of
    :func:`~cfattr_monai.metrics.localization.summarize`), one row per percentile P, columns as in Table 1.

    Example:
        >>> s = {"mean": 1.0, "std": 0.5, "n": 3, "ci95": [0.5, 1.5]}
        >>> fragment = {"ours": {"H": s, "L": s, "A": s}, "gradcam": {"P50": {"H": s, "L": s, "A": s}}}
        >>> print(interval_table(fragment, baselines=("gradcam",)).splitlines()[-1])
        | 50 | [0.5, 1.5] | [0.5, 1.5] | [0.5, 1.5] | [0.5, 1.5] | [0.5, 1.5] | [0.5, 1.5] |
    """
    names = [BASELINE_NAMES.get(b, b) for b in baselines]
    ours = fragment["ours"]
    rows = ([p.lstrip("P"), *(cell for m in METRIC_DIRECTIONS for cell in
                              (_interval(ours[m]), *(_interval(fragment[b][p][m]) for b in baselines)))]
            for p in _percentiles(fragment, baselines))
    n_images, n_lesion = ours["A"]["n"], ours["H"]["n"]
    n = f"n = {n_images} images"
    if n_lesion != n_images:
        n += f" ({n_lesion} with lesion ground truth for H and L)"
    return "\n".join([
        f"95 % confidence intervals of the means (percentile bootstrap), {n}",
        "",
        *markdown_table(["P", *(f"{m} {x}" for m in METRIC_DIRECTIONS for x in ("ours", *names))], rows),
    ])


def verdicts(fragment: Mapping, baselines: Sequence[str] = ("gradcam", "saliency")) -> dict[str, dict[str, dict]]:
    """Per baseline, percentile and metric: ``{"p", "better", "better_on_mean", "significant"}``.

    ``better``: the Wilcoxon test's signed ranks favour ours in the metric's direction
    (:data:`~cfattr_monai.metrics.localization.METRIC_DIRECTIONS`); ``significant``: better and p < 0.01.
    ``better_on_mean`` compares the means, which can disagree with the ranks when a few images dominate.

    Raises:
        ValueError: the fragment has no ``wilcoxon_favours_ours`` (written before the test's direction was kept).
    """
    if "wilcoxon_favours_ours" not in fragment:
        raise ValueError("the attribution metrics have no 'wilcoxon_favours_ours' (the direction of each Wilcoxon "
                         "test); they were written by an older version: rerun the evaluation (evaluate.json).")
    result: dict[str, dict[str, dict]] = {}
    for b in baselines:
        for p, metrics in fragment[b].items():
            for metric, direction in METRIC_DIRECTIONS.items():
                ours, theirs = fragment["ours"][metric]["mean"], metrics[metric]["mean"]
                p_value = fragment["wilcoxon_p"][b][p][metric]
                better = fragment["wilcoxon_favours_ours"][b][p][metric]
                result.setdefault(b, {}).setdefault(p, {})[metric] = {
                    "p": p_value, "better": bool(better),
                    "better_on_mean": bool(ours < theirs if direction == "lower" else ours > theirs),
                    "significant": bool(better and p_value < ALPHA),
                }
    return result


def significance_table(fragment: Mapping, baselines: Sequence[str] = ("gradcam", "saliency")) -> str:
    """Wilcoxon signed-rank p-values, ours vs each baseline per metric and P; ✓ = ours better with p < 0.01."""
    marks = verdicts(fragment, baselines)
    names = [BASELINE_NAMES.get(b, b) for b in baselines]
    columns = [f"{m} vs {x}" for m in METRIC_DIRECTIONS for x in names]
    def cell(p: str, metric: str, b: str) -> str:
        if fragment["ours"][metric]["n"] == 0:  # no lesion ground truth: H and L are not defined
            return "–"
        v = marks[b][p][metric]
        return f"{v['p']:.2g} {'✓' if v['significant'] else '✗'}"

    rows = ([p.lstrip("P"), *(cell(p, m, b) for m in METRIC_DIRECTIONS for b in baselines)]
            for p in _percentiles(fragment, baselines))
    lines = [
        ("Wilcoxon signed-rank p (two-sided, paired per image); ✓ ours better (the signed ranks favour ours) with "
         "p < 0.01, ✗ otherwise"),
        "",
        *markdown_table(["P", *columns], rows),
    ]
    return "\n".join(lines)


def timing_table(records: Sequence[Mapping]) -> str:
    """Per benchmark record (``scripts/benchmark.py`` JSON): a caption, then one row per method of
    :data:`TIMING_METHODS` with what runs, its maps/s and ours' maps/s divided by it (``–`` where not measured).

    Example:
        >>> record = {"backbone": "densenet121", "size": [256, 256], "batch": 8, "device": "cpu",
        ...           "maps_per_s": {"ours": 12.0, "gradcam": 6.0}}
        >>> print(timing_table([record]).splitlines()[6])
        | gradcam | MONAI GradCAM, frozen weights (gradient through the input) | 6 | 2 |
    """
    fmt = lambda v: "–" if v is None else f"{v:.3g}"  # noqa: E731 - local formatter
    blocks = []
    for record in records:
        rates, ours = record["maps_per_s"], record["maps_per_s"].get("ours")
        caption = (f"{record.get('backbone', '?')} {'×'.join(str(s) for s in record['size'])}, batch "
                   f"{record['batch']}, {record['device']}")
        rows = ([name, what, fmt(rates.get(name)), fmt(ours / rates[name] if ours and rates.get(name) else None)]
                for name, what in TIMING_METHODS.items())
        header = ["method", "what runs", "maps/s", "ours ÷ method"]
        blocks.append("\n".join([caption, "", *markdown_table(header, rows)]))
    return "\n\n".join(blocks)
