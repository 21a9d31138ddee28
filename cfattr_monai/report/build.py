"""Assemble the report: ``report.md`` with Table 1, its significance tests, the counterfactuals' acceptance figures,
Fig. 1c, the Fig. 3 grid and timing.

Every input is optional and may be a dict or the path of the JSON/NPZ file that holds it, so the report can be
built at any stage of the pipeline; a missing part is named in the report with the command that produces it.

Example:
    >>> import tempfile
    >>> report = write_report(tempfile.mkdtemp())
    >>> "not available" in report.read_text()
    True
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cfattr_monai.io.outputs import atomic_path
from cfattr_monai.report.figures import save_attribution_grid, save_roc_figure
from cfattr_monai.report.tables import (
    BASELINE_NAMES,
    interval_table,
    markdown_table,
    significance_table,
    table1,
    timing_table,
    verdicts,
)

__all__ = ["write_report"]

JsonInput = Mapping | str | Path | None


def _read_json(value: JsonInput) -> Mapping | None:
    """The dict itself, the parsed file, or None when the file does not exist."""
    if value is None or isinstance(value, Mapping):
        return value
    path = Path(value)
    return json.loads(path.read_text()) if path.is_file() else None


def _read_npz(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of an ``.npz`` file, read into memory and the file closed, or None when it does not exist."""
    if not Path(path).is_file():
        return None
    with np.load(path) as archive:
        return dict(archive)


def _direction(verdict: Mapping) -> str:
    """How ours compares in a cell of :func:`verdicts`: by the test's signed ranks, and the mean where it disagrees."""
    ranks = "better" if verdict["better"] else "worse"
    if verdict["better"] == verdict["better_on_mean"]:
        return ranks
    return f"{ranks} on the signed ranks, {'better' if verdict['better_on_mean'] else 'worse'} on the mean"


def _empty_maps_line(attribution: Mapping) -> str:
    """How many binary maps are empty per method (and P): Table 1 scores them H = image diagonal, L = 0, A = 0."""
    empty = attribution["n_empty_maps"]
    baselines = [b for b in empty if b != "ours"]
    counts = ", ".join(f"{BASELINE_NAMES.get(b, b)} {' / '.join(str(n) for n in empty[b].values())}" for b in baselines)
    return (f"Empty binary maps, which Table 1 scores H = the image diagonal, L = 0 and A = 0 (a baseline map that is "
            f"zero everywhere has no pixel above its percentile): ours {empty['ours']}; at "
            f"{' / '.join(empty[baselines[0]])}: {counts}; of {attribution['ours']['A']['n']} images.")


def _attribution_section(attribution: Mapping | None, examples, out_dir: Path) -> list[str]:
    lines = ["## Attribution: localization against the lesion ground truth (paper Table 1)", ""]
    if attribution is None:
        return lines + ["not available: run the attributor bundle's `configs/evaluate.json` first.", ""]
    n_flagged = attribution.get("n_flagged")
    theta = attribution.get("settings", {}).get("classification_threshold", 0.5)
    annotated = attribution.get("lesion_ground_truth", True)
    if not annotated:
        lines += ["No lesion ground truth in this data set: H and L are not defined (–), A is; as in the paper's "
                  "chest X-ray column.", ""]
    lines += [
        f"{'Lesion' if annotated else 'Pathological'} test images: "
        f"{attribution.get('n_lesion_images', attribution['ours']['H']['n'])}; "
        f"flagged by the classifier (p ≥ θ = {theta:.4g}, its operating point): {n_flagged}; "
        f"counterfactual flipped below θ "
        f"(flip rate): {attribution.get('flip_rate', float('nan')):.3f}.",
        "Grad-CAM and saliency are binarized at their own 50th/75th/90th percentile; ours is its binary map M̂.",
        _empty_maps_line(attribution),
        "",
        table1(attribution),
        "",
        interval_table(attribution),
        "",
        significance_table(attribution),
        "",
    ]
    failures = [
        f"{metric} vs {baseline} at {p} (ours {_direction(v)}, p = {v['p']:.2g})"
        for baseline, by_p in verdicts(attribution).items()
        for p, by_metric in by_p.items()
        for metric, v in by_metric.items()
        if not v["significant"] and attribution["ours"][metric]["n"] > 0
    ]
    lines += ["Where ours does not beat a baseline significantly: " + ("; ".join(failures) if failures else "nowhere."), ""]
    if examples is not None:
        grid = save_attribution_grid(examples, out_dir / "fig3_attribution_grid.png")
        lines += [f"![Fig. 3: (a) image with GT contour, (b) ours, (c) Grad-CAM, (d) saliency]({grid.name})", ""]
    return lines


def _counterfactual_section(acceptance: Mapping | None) -> list[str]:
    lines = ["## Counterfactuals: flip rate, localization, area, randomization", ""]
    if acceptance is None:
        command = "python -m cfattr_monai.metrics.counterfactual bundles/attributor --out acceptance.json"
        return lines + [f"not available: run `{command}`.", ""]

    def value(key: str, digits: int = 3) -> str:
        number = acceptance.get(key)
        return "–" if number is None else f"{number:.{digits}f}"

    def pair(key: str) -> str:
        both = acceptance.get(key) or {}
        return " / ".join("–" if both.get(k) is None else f"{both[k]:.2f}" for k in ("attributor", "classifier"))

    theta = acceptance.get("threshold")
    rows = [
        ("flagged lesion images (p(c\\|I) ≥ θ" + (f" = {theta:.3g}" if theta is not None else "") + ")",
         f"{acceptance.get('flagged_lesion_images')} of {acceptance.get('lesion_images')}", "–"),
        ("flipped: p(c\\|π(M̂)) ≤ θ", value("flipped"), "≥ 0.80"),
        ("reference: the healthy twin (the phantom without its lesions) below θ", value("twin_flipped"), "–"),
        ("reference: π of the lesion's compact hull below θ", value("oracle_flipped"), "–"),
        ("flipped, among the images whose healthy twin is below θ", value("flipped_where_twin_flips"), "–"),
        ("binary map M̂ overlaps the lesion", value("lesion_hit"), "≥ 0.70"),
        ("mean d(M̂) of the flagged lesion images (δ = " + value("delta") + ")", value("mean_area_flagged"), "≤ δ"),
        ("mean map area, healthy ÷ lesion images", value("healthy_to_lesion_area"), "< 0.33"),
        ("Spearman ρ vs re-initialized attributor / randomized classifier, whole image",
         pair("randomization_spearman"), "< 0.2"),
        ("the same inside the organ", pair("randomization_spearman_organ"), "–"),
        ("the same as mean \\|ρ\\| (an inverted map is structure too, not noise)", pair("randomization_spearman_abs"),
         "–"),
        ("reference: Spearman ρ between two re-initialized attributors", value("randomization_spearman_between_draws", 2),
         "–"),
    ]
    return lines + [
        f"Split `{acceptance.get('split', 'test')}`, {acceptance.get('images')} images. The healthy twin bounds what removing the lesions can "
        "achieve: a flagged image whose twin stays above θ is flagged for its anatomy.",
        "",
        *markdown_table(["quantity", "value", "acceptance"], rows),
        "",
    ]


def _marginalization_section(marginalization: Mapping | None, out_dir: Path) -> list[str]:
    lines = ["## Marginalization: classifier ROC with inpainting (paper Fig. 1c)", ""]
    if marginalization is None:
        return lines + ["not available: run the inpainter bundle's `configs/evaluate.json` first.", ""]

    def auc(key: str) -> str:
        value = marginalization.get(key)
        if isinstance(value, Mapping):
            return f"{value['mean']:.3f} ± {value.get('std', 0.0):.3f}"
        return "–" if value is None else f"{value:.3f}"

    lines += [
        *markdown_table(["AUC unchanged", "AUC inpainting in healthy tissue", "AUC inpainting in lesions"],
                        [[auc("auc_none"), auc("auc_healthy_inpaint"), auc("auc_lesion_inpaint")]]),
        "",
    ]
    dp = marginalization.get("mean_abs_dp_healthy")
    if isinstance(dp, Mapping):
        lines += [
            "Mean |Δp(c)| after marginalizing healthy tissue (lower = more domain-faithful):",
            "",
            *markdown_table(list(dp), [[f"{v:.4f}" for v in dp.values()]]),
            "",
        ]
    twin_dp, twin_psnr = marginalization.get("twin_abs_dp"), marginalization.get("twin_psnr")
    if isinstance(twin_dp, Mapping) and isinstance(twin_psnr, Mapping):
        lines += [
            "The lesion holes of (iii) filled by each π, against the healthy twin (the phantom drawn without its "
            "lesions — the true counterfactual): mean |p(c|π(I)) − p(c|twin)| (lower is better) and the hole PSNR "
            "against the twin (higher is better):",
            "",
            *markdown_table(["π", *twin_dp], [
                ["\\|Δp\\| to the twin", *(f"{v:.4f}" for v in twin_dp.values())],
                ["hole PSNR to the twin (dB)", *(f"{twin_psnr[k]:.1f}" for k in twin_dp)],
            ]),
            "",
        ]
    floor = marginalization.get("sensitivity_floor")
    if isinstance(floor, Mapping):
        lines += [
            f"Sensitivity floor: the original pixels plus N(0, {floor['noise_std']:g}²) noise in the same holes "
            f"(hole PSNR {floor['psnr']:.1f} dB) already move p(c) by {floor['mean_abs_dp_healthy']:.4f} on average; "
            "no fill can be expected to stay far below this.",
            "",
        ]
    if "roc" in marginalization:
        figure = save_roc_figure(marginalization, out_dir / "fig1c_roc.png")
        lines += [f"![Fig. 1c: ROC curves]({figure.name})", ""]
    return lines


def _timing_section(records: Sequence[Mapping]) -> list[str]:
    lines = ["## Timing: attribution maps per second (paper §4 \"Timing\")", ""]
    if not records:
        command = "python scripts/benchmark.py --backbone … --size H W --batch N --out FILE"
        return lines + [f"not available: run `{command}`.", ""]
    return lines + [timing_table(records), "", "Ratios are ours' maps/s divided by the method's.", ""]


def write_report(
    out_dir: str | Path,
    attribution: JsonInput = None,
    examples: Mapping | str | Path | None = None,
    marginalization: JsonInput = None,
    timing: Sequence[JsonInput] = (),
    acceptance: JsonInput = None,
    title: str = "cfattr-monai report",
) -> Path:
    """Write ``out_dir/report.md`` (+ PNG figures) and ``out_dir/report_metrics.json``; return the report's path.

    Args:
        out_dir: output folder (created).
        attribution: :func:`~cfattr_monai.report.evaluate.evaluate_attribution`'s fragment or its JSON file.
        examples: the maps of the Fig. 3 images, a dict or ``attribution_examples.npz``.
        marginalization: the inpainter evaluation (``bundles/inpainter/eval/marginalization.json``) or its dict.
        timing: ``scripts/benchmark.py`` records or their JSON files (missing files are skipped).
        acceptance: :func:`~cfattr_monai.metrics.counterfactual.acceptance_summary` of the trained attributor, or
            the JSON file its command line writes with ``--out``.
        title: the report's heading.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    attribution, marginalization, acceptance = map(_read_json, (attribution, marginalization, acceptance))
    if isinstance(examples, (str, Path)):
        examples = _read_npz(examples)
    records = [r for r in map(_read_json, timing) if r is not None]
    lines = [f"# {title}", ""]
    lines += _attribution_section(attribution, examples, out_dir)
    lines += _counterfactual_section(acceptance)
    lines += _marginalization_section(marginalization, out_dir)
    lines += _timing_section(records)
    report = out_dir / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines))
    summary = {"attribution": attribution, "acceptance": acceptance, "marginalization": marginalization,
               "timing": records}
    with atomic_path(out_dir / "report_metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return report
