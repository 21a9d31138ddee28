"""``cfattr explain``: outputs per image, streaming batches, resizing, DICOM Secondary Captures, bad input, resume.

A tiny stand-in explainer (``ThresholdExplainer``) keeps these tests independent of trained bundles; one slow test
runs the real ``load_explainer`` when ``bundles/attributor/models/model.pt`` exists.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from test_dicom_io import write_dicom

import cfattr_monai.io.explanations as explanations
from cfattr_monai.cli import main
from cfattr_monai.io.explanations import CSV_COLUMNS, bundle_image_size, explain_images, render_overlay
from cfattr_monai.io.images import load_image

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS, COLS = 32, 40
IMAGE = (np.add.outer(np.arange(ROWS), np.arange(COLS)) * 4).astype(np.uint8)  # a ramp, brightest bottom-right


class ThresholdExplainer(torch.nn.Module):
    """``CounterfactualExplainer`` stand-in: M = I, M̂ = I > 0.5, π(M̂) = I with M̂ set to 0, p = mean intensity."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []
        self.fail_on_call = fail_on_call

    def forward(self, images):
        self.calls.append(tuple(images.shape))
        if self.fail_on_call == len(self.calls):
            raise RuntimeError("simulated crash in the forward pass")
        mask = (images > 0.5).float()
        counterfactual = images * (1 - mask)
        return {
            "map": images,
            "mask": mask,
            "counterfactual": counterfactual,
            "p": images.mean((1, 2, 3)),
            "p_counterfactual": counterfactual.mean((1, 2, 3)),
        }


def _inputs(folder: Path) -> dict[str, Path]:
    """A PNG, a NIfTI and two DICOMs of one series (one MONOCHROME1 with a VOI window), in nested folders."""
    (folder / "study").mkdir(parents=True)
    Image.fromarray(IMAGE).save(folder / "a.png")
    nib.save(nib.Nifti1Image(IMAGE.T.astype(np.float32), np.diag([0.5, 0.25, 1.0, 1.0])), folder / "b.nii.gz")
    first = write_dicom(folder / "study" / "IM1.dcm", pixels=IMAGE.astype(np.uint16) * 16, PixelSpacing=[0.1, 0.1])
    write_dicom(
        folder / "study" / "IM2", pixels=4080 - IMAGE.astype(np.uint16) * 16, photometric="MONOCHROME1",
        WindowCenter=2048, WindowWidth=4096, SeriesInstanceUID=first.SeriesInstanceUID,
        StudyInstanceUID=first.StudyInstanceUID,
    )  # fmt: skip
    return {"png": folder / "a.png", "nifti": folder / "b.nii.gz", "dcm": folder / "study" / "IM1.dcm",
            "dcm_mono1": folder / "study" / "IM2"}  # fmt: skip


def _rows(out: Path) -> list[dict]:
    with (out / "explanations.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _assert_consistent(out: Path) -> None:
    """No temporary file, and every file named in the table exists (nothing half-written, nothing orphaned)."""
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]
    named = {row[k] for row in _rows(out) for k in CSV_COLUMNS[7:] if row[k]}
    assert named <= {p.name for p in out.iterdir()}


def test_every_output_is_written_and_aligned(tmp_path):
    files = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    summary = explain_images(ThresholdExplainer(), [tmp_path / "in"], out, (COLS, ROWS), batch_size=3, progress=False)
    assert (summary["explained"], summary["skipped"], summary["resized"]) == (4, 0, 0)
    rows = {Path(r["image"]).name: r for r in _rows(out)}
    assert list(_rows(out)[0]) == list(CSV_COLUMNS) and len(rows) == 4
    _assert_consistent(out)

    for name, path in [("a.png", files["png"]), ("b.nii.gz", files["nifti"]), ("IM1.dcm", files["dcm"])]:
        row, image = rows[name], load_image(path)
        soft = nib.load(out / row["map"])
        np.testing.assert_allclose(soft.affine, image.affine.numpy())  # NIfTI on the source grid
        np.testing.assert_allclose(soft.get_fdata(), image[0].numpy(), atol=1e-6)
        mask = np.asarray(nib.load(out / row["mask"]).dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        assert int(row["map_area_px"]) == mask.sum()
        assert float(row["area_ratio_image"]) == pytest.approx(mask.sum() / mask.size, abs=1e-6)
        assert float(row["p"]) == pytest.approx(float(image.mean()), abs=1e-5)
        assert float(row["p_counterfactual"]) < float(row["p"])
        overlay = np.asarray(Image.open(out / row["overlay"]))
        assert overlay.shape == (ROWS, COLS, 3)  # written as the source displays: rows × columns
        counterfactual = np.asarray(Image.open(out / row["counterfactual"]))
        expected = np.where(image[0].numpy().T > 0.5, 0, np.rint(image[0].numpy().T * 255))
        np.testing.assert_allclose(counterfactual, expected, atol=1)

    assert rows["a.png"]["dicom_overlay"] == "" and rows["b.nii.gz"]["dicom_mask"] == ""
    ramp_png = np.asarray(Image.open(out / rows["a.png"]["counterfactual"]))
    ramp_dcm = np.asarray(Image.open(out / rows["IM2"]["counterfactual"]))
    np.testing.assert_allclose(ramp_dcm, ramp_png, atol=2)  # MONOCHROME1 + window displays like the PNG


def test_dicom_inputs_get_secondary_captures_of_their_study(tmp_path):
    files = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    explain_images(ThresholdExplainer(), [files["dcm"], files["dcm_mono1"]], out, (COLS, ROWS), progress=False)
    series = {}
    for row in _rows(out):
        source = pydicom.dcmread(row["image"])
        assert row["overlay"].startswith(str(source.SOPInstanceUID))  # named after the SOP Instance UID
        for kind in ("dicom_overlay", "dicom_mask"):
            sc = pydicom.dcmread(out / row[kind])
            assert sc.StudyInstanceUID == source.StudyInstanceUID
            assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
            assert sc.SOPInstanceUID != source.SOPInstanceUID and sc.SeriesInstanceUID != source.SeriesInstanceUID
            assert (sc.Rows, sc.Columns) == (ROWS, COLS)
            assert "PatientAddress" not in sc and sc.PatientID == source.PatientID
            series.setdefault(kind, set()).add(sc.SeriesInstanceUID)
        overlay_sc = pydicom.dcmread(out / row["dicom_overlay"]).pixel_array
        np.testing.assert_array_equal(overlay_sc, np.asarray(Image.open(out / row["overlay"])))
        mask_sc = pydicom.dcmread(out / row["dicom_mask"]).pixel_array
        np.testing.assert_array_equal(mask_sc, np.asarray(nib.load(out / row["mask"]).dataobj).T * 255)
    assert len(series["dicom_overlay"]) == len(series["dicom_mask"]) == 1  # one new series per source series and kind
    assert series["dicom_overlay"] != series["dicom_mask"]


def test_images_stream_in_batches(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(5):
        Image.fromarray(np.roll(IMAGE, k, axis=1)).save(folder / f"{k}.png")
    events = []
    real_load = explanations.load_image
    monkeypatch.setattr(explanations, "load_image", lambda p: events.append("load") or real_load(p))
    explainer = ThresholdExplainer()
    original_forward = explainer.forward
    monkeypatch.setattr(explainer, "forward", lambda x: events.append(f"explain {len(x)}") or original_forward(x))
    explain_images(explainer, [folder], tmp_path / "out", (COLS, ROWS), batch_size=2, progress=False)
    assert events == ["load", "load", "explain 2", "load", "load", "explain 2", "load", "explain 1"]


@pytest.mark.parametrize("shape", [(32, 36), (200, 150)], ids=["smaller than the network", "larger"])
def test_other_sizes_are_resized_and_maps_resampled_back(tmp_path, shape):
    array = np.asarray(Image.fromarray(IMAGE).resize(shape[::-1], Image.BILINEAR))
    Image.fromarray(array).save(tmp_path / "odd.png")
    explainer = ThresholdExplainer()
    summary = explain_images(explainer, [tmp_path / "odd.png"], tmp_path / "out", (COLS, ROWS), progress=False)
    assert explainer.calls == [(1, 1, COLS, ROWS)] and summary["resized"] == 1
    row = _rows(tmp_path / "out")[0]
    assert row["resized"] == "1"
    assert nib.load(tmp_path / "out" / row["map"]).shape == (shape[1], shape[0])  # (X, Y) of the source
    assert np.asarray(Image.open(tmp_path / "out" / row["overlay"])).shape == (*shape, 3)
    counterfactual = np.asarray(Image.open(tmp_path / "out" / row["counterfactual"]))
    mask = np.asarray(nib.load(tmp_path / "out" / row["mask"]).dataobj).T
    source = load_image(tmp_path / "odd.png")[0].numpy().T
    np.testing.assert_allclose(counterfactual[mask == 0], np.rint(source[mask == 0] * 255), atol=1)  # untouched


ESCAPING_UIDS = ["../../escaped", "/tmp/escaped", "..", "1.2.3/../../x"]


@pytest.mark.parametrize("uid", ESCAPING_UIDS)
def test_output_names_cannot_escape_the_output_folder(tmp_path, uid):
    inputs = tmp_path / "in"
    inputs.mkdir()
    with pytest.warns(UserWarning):  # pydicom warns about the invalid UID, and writes it anyway
        write_dicom(inputs / "x.dcm", pixels=IMAGE.astype(np.uint16), SOPInstanceUID=uid)
    Image.fromarray(IMAGE).save(inputs / "..png", format="PNG")  # hidden: skipped in folders, taken when named
    Image.fromarray(IMAGE).save(inputs / "-rf.png")
    out = tmp_path / "out"
    explain_images(ThresholdExplainer(), [inputs, inputs / "..png"], out, (COLS, ROWS), progress=False)
    everything = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {p for p in everything if not p.startswith(("in/", "out/"))} == set()
    written = [p[len("out/") :] for p in everything if p.startswith("out/")]
    assert all("/" not in name and not name.startswith((".", "-")) for name in written)
    assert len(_rows(out)) == 3
    _assert_consistent(out)


def _corrupt_png(folder):
    (folder / "c_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)


def _truncated_dicom(folder):
    write_dicom(folder / "c_truncated.dcm", pixels=IMAGE.astype(np.uint16))
    data = (folder / "c_truncated.dcm").read_bytes()
    (folder / "c_truncated.dcm").write_bytes(data[:-100])


def _report_dicom(folder):
    write_dicom(folder / "c_report.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11", PixelData=None)


def _nan_nifti(folder):
    array = IMAGE.T.astype(np.float32)
    array[0, 0] = np.nan
    nib.save(nib.Nifti1Image(array, np.eye(4)), folder / "c_nan.nii.gz")


def _constant_png(folder):
    Image.fromarray(np.zeros((ROWS, COLS), np.uint8)).save(folder / "c_blank.png")


BAD_INPUTS = [  # (writer of one bad file among good ones, expected message)
    (_corrupt_png, "c_corrupt.png: cannot read the image"),
    (_truncated_dicom, "c_truncated.dcm: cannot decode the pixel data"),
    (_report_dicom, r"c_report.dcm: DICOM object without pixel data \(Basic Text SR Storage\)"),
    (_nan_nifti, r"c_nan.nii.gz: 1 NaN/Inf pixel"),
    (_constant_png, "c_blank.png: constant image"),
]


@pytest.mark.parametrize("writer, message", BAD_INPUTS, ids=[w.__name__[1:] for w, _ in BAD_INPUTS])
def test_bad_input_stops_with_a_clear_error_and_no_partial_output(tmp_path, writer, message):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "d"):  # sorted: a, b, then the bad c_…, then d
        Image.fromarray(IMAGE).save(folder / f"{name}.png")
    writer(folder)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        explain_images(ThresholdExplainer(), [folder], out, (COLS, ROWS), batch_size=2, progress=False)
    assert [Path(r["image"]).name for r in _rows(out)] == ["a.png", "b.png"]  # the batch before the bad file
    _assert_consistent(out)

    summary = explain_images(
        ThresholdExplainer(), [folder], out, (COLS, ROWS), skip_bad=True, resume=True, progress=False
    )
    assert (summary["explained"], summary["skipped"]) == (1, 1)  # resumed: only d.png was left
    assert message.split(":")[0].replace("\\", "") in summary["skipped_errors"][0]
    assert [Path(r["image"]).name for r in _rows(out)] == ["a.png", "b.png", "d.png"]
    _assert_consistent(out)


def test_a_resume_from_another_working_directory_skips_what_is_done(tmp_path, monkeypatch):
    """The table lists each image by its absolute path, so relative inputs resume from any folder."""
    _inputs(tmp_path / "in")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        explain_images(ThresholdExplainer(fail_on_call=2), [Path("in")], out, (COLS, ROWS), 2, progress=False)
    monkeypatch.chdir(tmp_path / "in")
    summary = explain_images(ThresholdExplainer(), [Path(".")], out, (COLS, ROWS), 2, resume=True, progress=False)
    assert (summary["explained"], summary["already_done"]) == (2, 2)
    assert len({r["overlay"] for r in _rows(out)}) == 4 and all(Path(r["image"]).is_absolute() for r in _rows(out))


def test_a_crash_leaves_a_consistent_folder_and_a_rerun_resumes(tmp_path):
    files = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        explain_images(ThresholdExplainer(fail_on_call=2), [tmp_path / "in"], out, (COLS, ROWS), 2, progress=False)
    assert len(_rows(out)) == 2
    _assert_consistent(out)
    explainer = ThresholdExplainer()
    summary = explain_images(explainer, [tmp_path / "in"], out, (COLS, ROWS), 2, resume=True, progress=False)
    assert (summary["explained"], summary["already_done"], len(explainer.calls)) == (2, 2, 1)
    assert sorted(Path(r["image"]).resolve() for r in _rows(out)) == sorted(p.resolve() for p in files.values())
    assert len({r["overlay"] for r in _rows(out)}) == 4
    _assert_consistent(out)

    table = (out / "explanations.csv").read_bytes()
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):  # neither flag: the earlier table is kept
        explain_images(ThresholdExplainer(), [tmp_path], out, (COLS, ROWS), progress=False)
    assert (out / "explanations.csv").read_bytes() == table
    with pytest.raises(ValueError, match="contradict"):  # both flags: refused before anything is touched
        explain_images(ThresholdExplainer(), [tmp_path], out, (COLS, ROWS), progress=False, resume=True, overwrite=True)
    assert (out / "explanations.csv").read_bytes() == table
    summary = explain_images(ThresholdExplainer(), [tmp_path], out, (COLS, ROWS), progress=False, overwrite=True)
    assert (summary["explained"], summary["already_done"], len(_rows(out))) == (4, 0, 4)  # a new table (out ⊂ input)
    _assert_consistent(out)


def _bundle(tmp_path, config: dict, overlay: dict | None = None) -> Path:
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    if overlay is not None:
        (bundle / "configs" / "task.json").write_text(json.dumps(overlay))
    return bundle


@pytest.mark.parametrize(
    "config, overlay, expected",
    [
        ({"image_size": [64, 48]}, None, (64, 48)),
        ({"image_size": [64, 48]}, {"image_size": [576, 448]}, (576, 448)),
        ({"spatial_size": "$[32, 32]"}, None, (32, 32)),
        ({"network_def": {}}, None, "pass --image-size"),
        ({"image_size": [64]}, None, "two positive integers"),
    ],
)
def test_bundle_image_size(tmp_path, config, overlay, expected):
    bundle = _bundle(tmp_path, config, overlay)
    overlays = ["configs/task.json"] if overlay else []
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            bundle_image_size(bundle, overlays)
    else:
        assert bundle_image_size(bundle, overlays) == expected


def test_render_overlay_marks_the_contour():
    mask = np.zeros((9, 9))
    mask[2:7, 2:7] = 1
    rgb = render_overlay(np.full((9, 9), 0.5), mask, mask)
    assert rgb.dtype == np.uint8 and tuple(rgb[2, 2]) == (0, 255, 0) and tuple(rgb[4, 4]) != (0, 255, 0)
    assert tuple(rgb[0, 0]) == (128, 128, 128)  # no map: the grey image


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch):
    """A bundle folder with an image size, whose ``load_explainer`` returns the stand-in explainer."""
    counterfactual = pytest.importorskip("cfattr_monai.explain.counterfactual")
    monkeypatch.setattr(counterfactual, "load_explainer", lambda bundle, overlays, device: ThresholdExplainer())
    return _bundle(tmp_path, {"image_size": [COLS, ROWS]})


def test_cli_explain(tmp_path, fake_bundle, capsys):
    _inputs(tmp_path / "in")
    code = main(["explain", "--bundle", str(fake_bundle), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--batch-size", "2", "--no-progress"])  # fmt: skip
    assert code == 0
    assert "explained 4 image(s)" in capsys.readouterr().out
    assert len(_rows(tmp_path / "out")) == 4


@pytest.mark.parametrize(
    "images, options, message",
    [
        (["a.png", "missing_dir"], [], "'missing_dir' does not exist"),
        (["a.png"], ["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["a.png"], ["--overlays", "configs/nope.json"], "configs/nope.json not found"),
        (["a.png"], ["--image-size", "8", "8"], "image_size must be two sizes of at least 32 px"),
        (["a.png"], ["--out", "a.png"], "--out a.png is a file, expected an output folder"),
        (["a.png"], ["--device", "gpu"], "--device 'gpu' is not a torch device"),
        pytest.param(["a.png"], ["--device", "cuda:0"], "no CUDA device torch can use; pass --device cpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")),
    ],
)
def test_cli_explain_user_errors(tmp_path, fake_bundle, capsys, monkeypatch, images, options, message):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(IMAGE).save(tmp_path / "a.png")
    assert main(["explain", "--bundle", str(fake_bundle), *images, "--out", "out", "--no-progress", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfattr explain: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written on a user error


def test_with_the_real_explainer_interface(tmp_path):
    """An untrained ``CounterfactualExplainer`` (tiny MobileNet, mean marginalizer) through the same path."""
    counterfactual = pytest.importorskip("cfattr_monai.explain.counterfactual")
    from cfattr_monai.networks.attribution import AttentionGatedUNet
    from cfattr_monai.networks.mobilenet import MobileNetV1
    from cfattr_monai.transforms.marginalize import get_marginalizer

    torch.manual_seed(0)
    classifier = MobileNetV1(width_mult=0.25).eval()
    attributor = AttentionGatedUNet(classifier)
    explainer = counterfactual.CounterfactualExplainer(attributor, classifier, get_marginalizer("mean"))
    files = _inputs(tmp_path / "in")
    summary = explain_images(explainer, [files["png"], files["dcm"]], tmp_path / "out", (64, 64), progress=False)
    assert (summary["explained"], summary["resized"]) == (2, 2)
    rows = _rows(tmp_path / "out")
    assert all(0.0 <= float(r[k]) <= 1.0 for r in rows for k in ("p", "p_counterfactual"))
    assert nib.load(tmp_path / "out" / rows[0]["map"]).shape == (COLS, ROWS)
    _assert_consistent(tmp_path / "out")


@pytest.mark.slow
def test_cli_explain_with_the_trained_attributor(tmp_path):
    bundle = REPO_ROOT / "bundles" / "attributor"
    if not (bundle / "models" / "model.pt").is_file():
        pytest.skip("bundles/attributor/models/model.pt missing: train the attributor bundle (make demo) first")
    from cfattr_monai.data.phantoms import generate_phantom

    rng = np.random.default_rng(0)
    for k in range(3):
        phantom = generate_phantom("mammo", 128, rng)
        Image.fromarray(np.rint(phantom["image"] * 255).astype(np.uint8)).save(tmp_path / f"p{k}.png")
    write_dicom(tmp_path / "p3.dcm", pixels=(phantom["image"] * 4095).astype(np.uint16), photometric="MONOCHROME2")
    code = main(["explain", "--bundle", str(bundle), str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    rows = _rows(tmp_path / "out")
    assert len(rows) == 4 and all(0.0 <= float(r["p"]) <= 1.0 for r in rows)
    _assert_consistent(tmp_path / "out")
    assert os.path.getsize(tmp_path / "out" / rows[-1]["dicom_overlay"]) > 0


@pytest.mark.parametrize("image_size", [(8, 8), (0, 0), (31, 64), (64,)])
def test_network_sizes_below_the_coarsest_stride_are_refused(tmp_path, image_size):
    Image.fromarray(IMAGE).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="image_size must be two sizes of at least 32 px"):
        explain_images(ThresholdExplainer(), [tmp_path / "a.png"], tmp_path / "out", image_size, progress=False)
    assert not (tmp_path / "out").exists()


def test_inputs_without_images_are_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no image files .* found in"):
        explain_images(ThresholdExplainer(), [tmp_path / "in"], tmp_path / "out", (COLS, ROWS), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("skip_bad", [False, True])
def test_thumbnails_are_refused_or_skipped(tmp_path, skip_bad):
    Image.fromarray(IMAGE[:16]).save(tmp_path / "thumb.png")
    Image.fromarray(IMAGE).save(tmp_path / "full.png")
    run = lambda: explain_images(  # noqa: E731
        ThresholdExplainer(), [tmp_path / "thumb.png", tmp_path / "full.png"], tmp_path / "out", (COLS, ROWS),
        skip_bad=skip_bad, progress=False,
    )  # fmt: skip
    if not skip_bad:
        with pytest.raises(explanations.ImageInputError, match=r"thumb.png: 40×16 pixels \(columns × rows\), expected at least 32"):
            run()
        return
    summary = run()
    assert (summary["explained"], summary["skipped"]) == (1, 1) and "thumb.png" in summary["skipped_errors"][0]


def test_a_run_that_fails_before_its_first_explanation_keeps_the_earlier_table(tmp_path):
    Image.fromarray(IMAGE).save(tmp_path / "a.png")
    out = tmp_path / "out"
    explain_images(ThresholdExplainer(), [tmp_path / "a.png"], out, (COLS, ROWS), progress=False)
    earlier = (out / "explanations.csv").read_text()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n junk")
    with pytest.raises(explanations.ImageInputError, match="a_corrupt.png"):
        explain_images(ThresholdExplainer(), [tmp_path / "bad"], out, (COLS, ROWS), progress=False, overwrite=True)
    assert (out / "explanations.csv").read_text() == earlier
    _assert_consistent(out)


@pytest.mark.parametrize("options, message", [
    ([], "holds the table of an earlier run; pass --resume"),
    (["--resume", "--overwrite"], "contradict each other"),
])
def test_cli_explain_into_an_earlier_table_is_a_user_error(tmp_path, fake_bundle, capsys, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(IMAGE).save(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "explanations.csv").write_text("earlier table\n")
    assert main(["explain", "--bundle", str(fake_bundle), "a.png", "--out", "out", "--no-progress", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfattr explain: error:") and message in err and "Traceback" not in err
    assert (tmp_path / "out" / "explanations.csv").read_text() == "earlier table\n"


@pytest.mark.parametrize("bundle", ["classifier", "attributor"])
def test_images_are_resized_as_the_bundles_resize_them(bundle):
    """Another size than the network's is resized as in the bundles' training, which the classifier has seen."""
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.transforms import Resized

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "train.json"))
    parser["image_size"] = [24, 32]
    resize = next(t for t in parser.get_parsed_content("preprocessing") if isinstance(t, Resized))
    image = MetaTensor(torch.rand(1, 48, 40))
    expected = torch.as_tensor(resize({"image": image})["image"])
    assert torch.allclose(explanations._to_network(image, (24, 32)), expected, atol=1e-6)
