"""Report generator on synthetic inputs: Table 1, significance marks, figures, timing, missing parts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cfattr_monai.explain.counterfactual import CounterfactualExplainer
from cfattr_monai.metrics.localization import signed_ranks_favour_ours, summarize, wilcoxon_tests
from cfattr_monai.networks.attribution import AttentionGatedUNet
from cfattr_monai.networks.mobilenet import MobileNetV1
from cfattr_monai.report.build import write_report
from cfattr_monai.report.evaluate import attribution_maps, evaluate_attribution, localization_study
from cfattr_monai.report.tables import interval_table, significance_table, table1, timing_table, verdicts
from cfattr_monai.transforms.marginalize import get_marginalizer

N, SIZE = 12, 32


def synthetic_maps(seed: int = 0) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Ours hits each lesion exactly; Grad-CAM is a blob elsewhere; saliency is noise."""
    rng = np.random.default_rng(seed)
    lesions = torch.zeros(N, 1, SIZE, SIZE)
    gradcam = torch.zeros(N, 1, SIZE, SIZE)
    for i in range(N):
        y, x = rng.integers(2, 12, size=2)
        lesions[i, 0, y : y + 6, x : x + 6] = 1
        gradcam[i, 0, 18:30, 18:30] = torch.rand(12, 12) + 0.5
    organs = torch.zeros(N, 1, SIZE, SIZE)
    organs[:, :, :, :24] = 1
    maps = {"mask": lesions.clone(), "gradcam": gradcam, "saliency": torch.rand(N, 1, SIZE, SIZE)}
    return maps, lesions, organs


@pytest.fixture(scope="module")
def fragment():
    maps, lesions, organs = synthetic_maps()
    result, per_image = localization_study(maps, lesions, organs)
    assert set(per_image) == {"ours", *(f"{b}_P{q}" for b in ("gradcam", "saliency") for q in (50, 75, 90))}
    return result


def test_localization_study_ranks_a_perfect_map_first(fragment):
    assert fragment["ours"]["H"]["mean"] == 0.0 and fragment["ours"]["L"]["mean"] == 1.0
    for baseline in ("gradcam", "saliency"):
        for p in ("P50", "P75", "P90"):
            assert fragment[baseline][p]["H"]["mean"] > 0
            assert fragment["wilcoxon_p"][baseline][p]["H"] < 0.01  # 12 paired images, all better: p = 2/2^12
    marks = verdicts(fragment)
    p_value = fragment["wilcoxon_p"]["gradcam"]["P90"]["H"]
    assert marks["gradcam"]["P90"]["H"] == {"p": p_value, "better": True, "better_on_mean": True, "significant": True}


def test_significance_follows_the_signed_ranks_not_the_means(tmp_path):
    """Ours farther on one of 40 images by a lot but closer on the other 39: the mean says worse, the test better;
    and the reverse with the roles swapped. The table marks what the signed ranks say, the text names both."""
    maps, lesions, organs = synthetic_maps()
    ours_h = np.r_[np.full(39, 1.0), 400.0]
    fragment, _ = localization_study(maps, lesions, organs)
    for flip, (mark, text) in {False: ("✓", None), True: ("✗", "worse on the signed ranks, better on the mean")}.items():
        ours, theirs = (np.full(40, 2.0), ours_h) if flip else (ours_h, np.full(40, 2.0))
        fragment["ours"]["H"] = summarize(ours)
        fragment["gradcam"]["P50"]["H"] = summarize(theirs)
        fragment["wilcoxon_p"]["gradcam"]["P50"].update(wilcoxon_tests({"H": ours}, {"H": theirs}))
        fragment["wilcoxon_favours_ours"]["gradcam"]["P50"].update(signed_ranks_favour_ours({"H": ours}, {"H": theirs}))
        verdict = verdicts(fragment)["gradcam"]["P50"]["H"]
        assert verdict["better"] is not flip and verdict["better_on_mean"] is flip and verdict["p"] < 0.01
        row = next(line for line in significance_table(fragment).splitlines() if line.startswith("| 50 |"))
        assert row.split(" | ")[1].endswith(mark)
        report = write_report(tmp_path, attribution=fragment).read_text()
        failures = report.split("Where ours does not beat a baseline significantly: ")[1].splitlines()[0]
        assert (f"H vs gradcam at P50 (ours {text}" in failures) if text else ("H vs gradcam at P50" not in failures)


def test_empty_binary_maps_are_counted_and_reported(tmp_path):
    """A Grad-CAM map that is zero everywhere (no positive evidence) and an empty map of ours are counted per
    method and P, and the report says how Table 1 scored them."""
    maps, lesions, organs = synthetic_maps()
    maps["gradcam"][:2] = 0.0
    maps["mask"][0] = 0.0
    fragment, per_image = localization_study(maps, lesions, organs)
    assert fragment["n_empty_maps"] == {"ours": 1, "gradcam": {"P50": 2, "P75": 2, "P90": 2},
                                        "saliency": {"P50": 0, "P75": 0, "P90": 0}}
    assert per_image["gradcam_P90"]["A"][:2].tolist() == [0.0, 0.0]
    assert per_image["gradcam_P90"]["H"][0] == pytest.approx(math.hypot(SIZE, SIZE))
    report = write_report(tmp_path, attribution=fragment).read_text()
    assert ("ours 1; at P50 / P75 / P90: Grad-CAM 2 / 2 / 2, saliency 0 / 0 / 0; of 12 images." in report)


def test_verdicts_refuse_metrics_without_the_test_direction(fragment):
    old = {key: value for key, value in fragment.items() if key != "wilcoxon_favours_ours"}
    with pytest.raises(ValueError, match="wilcoxon_favours_ours.*rerun the evaluation"):
        verdicts(old)


def test_table1_has_the_paper_layout(fragment):
    text = table1(fragment)
    assert "| P | H ours | H Grad-CAM | H saliency | L ours | L Grad-CAM | L saliency |" in text
    assert "| P | A ours | A Grad-CAM | A saliency |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 50", "| 75", "| 90"))]
    assert len(rows) == 6 and rows[0].startswith("| 50 | 0 ± 0 |")


def test_interval_table_gives_each_mean_its_interval(fragment):
    lines = interval_table(fragment).splitlines()
    assert lines[0].endswith("n = 12 images")
    assert lines[2] == ("| P | H ours | H Grad-CAM | H saliency | L ours | L Grad-CAM | L saliency "
                        "| A ours | A Grad-CAM | A saliency |")
    rows = {line.split(" | ")[0].strip("| "): line.strip("|").split(" | ")[1:] for line in lines[4:]}
    assert list(rows) == ["50", "75", "90"] and all(len(cells) == 9 for cells in rows.values())
    assert rows["50"][0] == "[0, 0]"  # ours hits every lesion: H = 0 on every image
    low, high = fragment["gradcam"]["P90"]["H"]["ci95"]  # the blob is fixed, the lesions move: H varies
    assert rows["90"][1] == f"[{low:.3g}, {high:.3g}]" and low < high


def test_report_with_every_part(fragment, tmp_path):
    maps, lesions, _ = synthetic_maps()
    examples = {"image": torch.rand(2, 1, SIZE, SIZE).numpy(), "lesion": lesions[:2].numpy(),
                "ours": maps["mask"][:2].numpy(), "mask": maps["mask"][:2].numpy(),
                "gradcam": maps["gradcam"][:2].numpy(), "saliency": maps["saliency"][:2].numpy()}
    np.savez(tmp_path / "examples.npz", **examples)
    (tmp_path / "attribution.json").write_text(json.dumps({**fragment, "flip_rate": 0.9, "n_flagged": 10}))
    marginalization = {"auc_none": 0.9, "auc_healthy_inpaint": 0.89, "auc_lesion_inpaint": 0.8,
                       "mean_abs_dp_healthy": {"inpaint": 0.02, "blur": 0.03},
                       "sensitivity_floor": {"noise_std": 0.01, "mean_abs_dp_healthy": 0.0157, "psnr": 40.0},
                       "twin_abs_dp": {"inpaint": 0.05, "blur": 0.12}, "twin_psnr": {"inpaint": 27.04, "blur": 22.0},
                       "roc": {"none": {"fpr": [0, 0.5, 1], "tpr": [0, 0.9, 1]}}}
    timing = {"device": "cpu", "backbone": "densenet121", "size": [256, 256], "batch": 8,
              "maps_per_s": {"ours": 8.0, "gradcam": 2.0, "iterative": None},
              "ratios": {"ours_vs_gradcam": 4.0, "ours_vs_iterative": None}}
    report = write_report(
        tmp_path / "out",
        attribution=tmp_path / "attribution.json",
        examples=tmp_path / "examples.npz",
        marginalization=marginalization,
        timing=[timing, tmp_path / "missing.json"],
        acceptance={"images": 120, "lesion_images": 60, "flagged_lesion_images": 49, "threshold": 0.307,
                    "flipped": 0.816, "twin_flipped": 0.776, "delta": 0.088, "mean_area_flagged": 0.062,
                    "randomization_spearman": {"attributor": 0.241, "classifier": -0.047},
                    "randomization_spearman_between_draws": 0.004},
    )
    text = report.read_text()
    assert "| flagged lesion images (p(c\\|I) ≥ θ = 0.307) | 49 of 60 | – |" in text
    assert "| flipped: p(c\\|π(M̂)) ≤ θ | 0.816 | ≥ 0.80 |" in text and "below θ | 0.776 | – |" in text
    assert "(δ = 0.088) | 0.062 | ≤ δ |" in text and "| 0.24 / -0.05 | < 0.2 |" in text
    assert "between two re-initialized attributors | 0.00 | – |" in text
    assert "| binary map M̂ overlaps the lesion | – | ≥ 0.70 |" in text  # absent figures print a dash
    assert "flip rate): 0.900" in text and "✓" in text
    assert interval_table(fragment) in text
    assert "fig3_attribution_grid.png" in text and (report.parent / "fig3_attribution_grid.png").stat().st_size > 0
    assert "fig1c_roc.png" in text and (report.parent / "fig1c_roc.png").is_file()
    assert "| 0.0200 | 0.0300 |" in text and "N(0, 0.01²)" in text and "by 0.0157" in text
    assert "| π | inpaint | blur |" in text and "to the twin | 0.0500 | 0.1200 |" in text and "| 27.0 | 22.0 |" in text
    assert "densenet121 256×256, batch 8, cpu" in text and "(gradient through the input) | 2 | 4 |" in text
    assert json.loads((report.parent / "report_metrics.json").read_text())["timing"][0]["batch"] == 8
    assert not list(report.parent.glob(".tmp-*"))


def test_report_names_what_is_missing(tmp_path):
    text = write_report(tmp_path, marginalization=tmp_path / "absent.json").read_text()
    assert text.count("not available") == 4 and "configs/evaluate.json" in text and "scripts/benchmark.py" in text
    assert "python -m cfattr_monai.metrics.counterfactual" in text


def test_timing_table_has_a_block_per_record_and_dashes_for_skipped_methods():
    records = [{"device": "cpu", "size": [8, 8], "batch": 1, "maps_per_s": {"ours": 2.0, "iterative": None}},
               {"backbone": "densenet121", "device": "cuda", "size": [256, 256], "batch": 8,
                "maps_per_s": {"ours": 9.0, "gradcam": 3.0}}]
    lines = timing_table(records).splitlines()
    assert lines[0] == "? 8×8, batch 1, cpu" and "densenet121 256×256, batch 8, cuda" in lines
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[2:] for line in lines if line.startswith("| ")}
    assert rows["ours"] == ["9", "1 |"] and rows["gradcam"] == ["3", "3 |"] and rows["iterative"] == ["–", "– |"]
    assert lines.count("| method | what runs | maps/s | ours ÷ method |") == 2


def test_attribution_maps_of_a_tiny_explainer():
    torch.manual_seed(0)
    classifier = MobileNetV1(width_mult=0.25).eval().requires_grad_(False)
    explainer = CounterfactualExplainer(AttentionGatedUNet(classifier), classifier, get_marginalizer("mean"))
    with torch.no_grad():
        maps = attribution_maps(explainer, torch.rand(3, 1, 64, 64), batch_size=2)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "ours": (3, 1, 64, 64), "mask": (3, 1, 64, 64), "counterfactual": (3, 1, 64, 64), "p": (3,),
        "p_counterfactual": (3,), "gradcam": (3, 1, 64, 64), "saliency": (3, 1, 64, 64)}
    assert all(torch.isfinite(v).all() for v in maps.values())


def test_evaluate_attribution_rejects_an_unknown_area_reference(tmp_path):
    with pytest.raises(ValueError, match="area_reference must be 'organ' or 'image'"):
        evaluate_attribution(tmp_path, tmp_path / "datalist.json", tmp_path, area_reference="breast")


def test_attributor_evaluate_config_calls_the_evaluation_and_the_report(repo_root, tmp_path, monkeypatch):
    from monai.bundle import ConfigParser

    import cfattr_monai.report.build
    import cfattr_monai.report.evaluate

    calls = {}
    record = lambda name: lambda *a, **k: calls.setdefault(name, (a, k))  # noqa: E731
    monkeypatch.setattr(cfattr_monai.report.evaluate, "evaluate_attribution", record("eval"))
    monkeypatch.setattr(cfattr_monai.report.build, "write_report", record("report"))
    parser = ConfigParser()
    parser.read_config(str(repo_root / "bundles" / "attributor" / "configs" / "evaluate.json"))
    parser["bundle_root"] = str(tmp_path)
    parser["phantoms"] = None
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    args, kwargs = calls["eval"]
    assert args == (str(tmp_path), f"{tmp_path}/../../data/phantoms/mammo_128/datalist.json", f"{tmp_path}/eval")
    assert kwargs["area_reference"] == "organ" and kwargs["split"] == "test" and kwargs["overlays"] == []
    assert calls["report"][1]["attribution"] == f"{tmp_path}/eval/attribution_metrics.json"


def test_report_without_lesion_ground_truth(tmp_path):
    """Chest X-ray: no lesion masks, so only A is defined (the paper's tuberculosis column)."""
    maps, lesions, _ = synthetic_maps()
    fragment, _ = localization_study(maps, torch.zeros_like(lesions), None)
    assert fragment["ours"]["H"]["n"] == fragment["ours"]["L"]["n"] == 0 and fragment["ours"]["A"]["n"] == N
    text = table1(fragment)
    assert "| 50 | – | – | – | – | – | – |" in text
    assert "A = |M̂| / |organ|" in text
    fragment.update(flip_rate=0.5, n_flagged=4, n_lesion_images=N, lesion_ground_truth=False,
                    settings={"area_reference": "image"})
    assert "A = |M̂| / |image|" in table1(fragment)
    report = write_report(tmp_path, attribution=fragment).read_text()
    assert "No lesion ground truth" in report and "Pathological test images: 12" in report
    failures = report.split("Where ours does not beat a baseline significantly: ")[1].splitlines()[0]
    assert "H vs" not in failures and "L vs" not in failures
    significance = [line for line in significance_table(fragment).splitlines() if line.startswith("| 50 |")][0]
    assert significance.startswith("| 50 | – | – | – | – | ") and "✓" in significance  # A only
    assert interval_table(fragment).splitlines()[0].endswith(f"n = {N} images (0 with lesion ground truth for H and L)")
