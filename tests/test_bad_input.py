"""Bad input across the datalist checker, the ``cfattr`` CLI, checkpoint loading and the three bundles.

Every case of the table states the error it expects (type and the message fragments that name the file, what was
expected and the fix) and checks that nothing partial is left behind: no temporary or staging files, no outputs that
the run's table does not list, no checkpoint from a refused bundle run.

Decisions the table pins down: RGB(A) images are converted to grey (with a warning) by ``cfattr explain`` and
refused in training datalists (the bundles' transforms are single-channel); 16-bit images are accepted and scaled by
their own range; MONOCHROME1 DICOMs are inverted by ``cfattr explain`` and refused in datalists (``LoadImaged``
would read them inverted).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image
from test_dicom_io import write_dicom

from cfattr_monai.bundle import load_network
from cfattr_monai.cli import main
from cfattr_monai.data.validate import DatalistError, check_datalist, check_pairs
from cfattr_monai.explain.counterfactual import write_classifier_fingerprint
from cfattr_monai.io.images import load_image

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS, COLS = 40, 48
IMAGE = (np.add.outer(np.arange(ROWS), np.arange(COLS)) * 2).astype(np.uint8)
MASK = np.zeros((ROWS, COLS), dtype=np.uint8)
MASK[10:20, 12:30] = 255


# ----------------------------------------------------------------------------------------------- helpers


def assert_nothing_partial(folder: Path) -> None:
    """No temporary/staging names anywhere under ``folder``; every output file is listed in explanations.csv."""
    if not folder.exists():
        return
    leftovers = [p for p in folder.rglob("*") if p.name.startswith((".tmp-", ".")) or p.name.endswith(".tmp")]
    assert not leftovers, f"partial files left behind: {leftovers}"
    table = folder / "explanations.csv"
    if table.is_file():
        with table.open(newline="") as f:
            listed = {value for row in csv.reader(f) for value in row} | {"explanations.csv"}
        orphans = [p.name for p in folder.iterdir() if p.is_file() and p.name not in listed]
        assert not orphans, f"outputs not listed in explanations.csv: {orphans}"


def chained(error: BaseException) -> list[BaseException]:
    """``error`` and its causes (MONAI's ConfigParser wraps errors raised in config expressions in RuntimeError)."""
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return chain


def raised(error_type: type, call: Callable[[], object]) -> str:
    """Call ``call``; return the message of the ``error_type`` it raised, directly or wrapped by ConfigParser."""
    with pytest.raises(Exception) as info:
        call()
    found = [e for e in chained(info.value) if isinstance(e, error_type)]
    assert found, f"expected {error_type.__name__} in the chain, got {chained(info.value)}"
    return str(found[0])


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_nifti(path: Path, rows_cols: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(rows_cols.T.astype(np.float32), np.eye(4)), path)
    return path


def write_dataset(folder: Path) -> Path:
    """A valid data set: two training and one validation item with lesion and organ masks."""
    items = []
    for i, label in enumerate((0, 1, 1)):
        write_png(folder / "images" / f"{i}.png", np.roll(IMAGE, i, axis=1))
        write_png(folder / "lesions" / f"{i}.png", MASK * label)
        write_png(folder / "organs" / f"{i}.png", np.full_like(MASK, 255))
        items.append(
            {"image": f"images/{i}.png", "label": label, "lesion": f"lesions/{i}.png", "organ": f"organs/{i}.png"}
        )
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"training": items[:2], "validation": items[2:], "test": items[2:]}))
    return datalist


def edit_datalist(datalist: Path, edit: Callable[[dict], None]) -> None:
    content = json.loads(datalist.read_text())
    edit(content)
    datalist.write_text(json.dumps(content))


def replace_image(name: str, writer: Callable[[Path], object], split: str = "training", key: str = "image"):
    """A case mutator: item 0 of ``split`` gets its ``key`` file written by ``writer`` under the new ``name``."""

    def mutate(datalist: Path) -> None:
        writer(datalist.parent / name)
        edit_datalist(datalist, lambda content: content[split][0].update({key: name}))

    return mutate


def truncated_png(path: Path) -> None:
    write_png(path, IMAGE)
    path.write_bytes(path.read_bytes()[:60])


def truncated_dicom(path: Path) -> None:
    write_dicom(path, pixels=IMAGE.astype(np.uint16) * 16)
    path.write_bytes(path.read_bytes()[:-200])


def with_nan(value: float) -> Callable[[Path], object]:
    def writer(path: Path) -> Path:
        array = IMAGE.astype(np.float32)
        array[3, 4] = value
        return write_nifti(path, array)

    return writer


# --------------------------------------------------------------------------------- datalist checker table

DATALIST_CASES = [  # (id, mutate(datalist), expected error type, message fragments)
    ("missing-datalist", lambda d: d.unlink(), FileNotFoundError, ["does not exist", "cfattr prepare"]),
    ("not-json", lambda d: d.write_text("{'training': ["), DatalistError, ["not valid JSON", "cfattr prepare"]),
    ("empty-datalist", lambda d: d.write_text("{}"), DatalistError, ["split 'training' is missing", "non-empty list"]),
    ("empty-split", lambda d: edit_datalist(d, lambda c: c.update(validation=[])), DatalistError,
     ["split 'validation' is []", "non-empty list"]),
    ("path-does-not-exist", lambda d: edit_datalist(d, lambda c: c["training"][1].update(image="images/nope.png")),
     DatalistError, ["training[1]", "nope.png does not exist", "fix the path"]),
    ("corrupt-png", replace_image("images/bad.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n garbage")),
     DatalistError, ["bad.png cannot be read", "corrupt", "re-export"]),
    ("truncated-png", replace_image("images/cut.png", truncated_png), DatalistError, ["cut.png cannot be read"]),
    ("truncated-dicom", replace_image("images/cut.dcm", truncated_dicom), DatalistError,
     ["cut.dcm cannot be read", "truncated"]),
    ("dicom-without-pixel-data", replace_image("images/sr.dcm", lambda p: write_dicom(p, PixelData=None)),
     DatalistError, ["sr.dcm cannot be read", "no pixel data"]),
    ("monochrome1-dicom", replace_image(
        "images/m1.dcm", lambda p: write_dicom(p, pixels=IMAGE.astype(np.uint16), photometric="MONOCHROME1")),
     DatalistError, ["m1.dcm is a MONOCHROME1 DICOM", "inverted", "cfattr_monai.io.load_image"]),
    ("rgb-image", replace_image("images/rgb.png", lambda p: write_png(p, np.stack([IMAGE] * 3, -1))),
     DatalistError, ["rgb.png is a 3-channel (colour) array", "expected one grey 2-D plane", "convert it"]),
    ("nan-pixels", replace_image("images/nan.nii.gz", with_nan(np.nan)), DatalistError,
     ["nan.nii.gz has 1 NaN/Inf pixel(s)", "expected finite values"]),
    ("inf-pixels", replace_image("images/inf.nii.gz", with_nan(np.inf)), DatalistError,
     ["inf.nii.gz has 1 NaN/Inf pixel(s)"]),
    ("constant-image", replace_image("images/flat.png", lambda p: write_png(p, np.full_like(IMAGE, 7))),
     DatalistError, ["flat.png is constant (7)", "check the export"]),
    ("image-below-minimum-size", replace_image("images/small.png", lambda p: write_png(p, IMAGE[:16, :20])),
     DatalistError, ["small.png is 20×16 pixels", "expected at least 32 per side"]),
    ("lesion-of-another-size", replace_image("lesions/big.png", lambda p: write_png(p, np.pad(MASK, 4)),
                                             key="lesion"),
     DatalistError, ["lesion", "big.png is 56×48", "expected the size of its image 48×40", "nearest-neighbour"]),
    ("organ-of-another-size", replace_image("organs/small.png", lambda p: write_png(p, MASK[:20]), key="organ",
                                            split="validation"),
     DatalistError, ["validation[0] organ", "expected the size of its image"]),
    ("non-binary-mask", replace_image("lesions/soft.png", lambda p: write_png(p, MASK // 2 + 3), key="lesion"),
     DatalistError, ["soft.png holds values [3, 130]", "expected a binary mask", "threshold it"]),
    ("label-not-binary", lambda d: edit_datalist(d, lambda c: c["training"][0].update(label=2)), DatalistError,
     ["training[0] label 2", "expected 0 (healthy) or 1"]),
    ("item-without-image", lambda d: edit_datalist(d, lambda c: c["training"][0].pop("image")), DatalistError,
     ["training[0] lacks ['image']", "relative to the datalist's folder"]),
    ("rgb-lesion", replace_image("lesions/rgb.png", lambda p: write_png(p, np.stack([MASK] * 3, -1)), key="lesion"),
     DatalistError, ["training[0] lesion", "rgb.png is a 3-channel (e.g. RGB) array of shape (3, 48, 40)",
                     "expected a single-channel 2-D mask", "single-channel 8-bit PNG", "one-channel NIfTI"]),
    ("rgba-organ", replace_image("organs/rgba.png", lambda p: write_png(p, np.stack([MASK] * 4, -1)), key="organ",
                                 split="validation"),
     DatalistError, ["validation[0] organ", "rgba.png is a 4-channel", "expected a single-channel 2-D mask"]),
    ("image-null", lambda d: edit_datalist(d, lambda c: c["training"][1].update(image=None)), DatalistError,
     ["training[1] image is null (NoneType), expected a file path string", "relative to the datalist's folder",
      'in quotes, e.g. "images/0001.png"']),
    ("image-number", lambda d: edit_datalist(d, lambda c: c["validation"][0].update(image=3)), DatalistError,
     ["validation[0] image is 3 (int), expected a file path string"]),
    ("image-list", lambda d: edit_datalist(d, lambda c: c["training"][0].update(image=["images/0.png"])),
     DatalistError, ['training[0] image is ["images/0.png"] (list), expected a file path string']),
    ("lesion-number", lambda d: edit_datalist(d, lambda c: c["training"][0].update(lesion=5)), DatalistError,
     ["training[0] lesion is 5 (int), expected a file path string", '"lesions/0001.png"']),
    ("organ-empty-list", lambda d: edit_datalist(d, lambda c: c["training"][0].update(organ=[])), DatalistError,
     ["training[0] organ is [] (list), expected a file path string"]),
]


@pytest.mark.parametrize(
    "mutate, error, fragments", [c[1:] for c in DATALIST_CASES], ids=[c[0] for c in DATALIST_CASES]
)
def test_check_datalist_refuses(tmp_path, mutate, error, fragments):
    datalist = write_dataset(tmp_path / "data")
    mutate(datalist)
    with pytest.raises(error) as info:
        check_datalist(datalist)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert_nothing_partial(tmp_path)


ACCEPTED_CASES = [  # (id, mutate) the checker must accept
    ("valid", lambda d: None),
    ("16-bit-png", replace_image("images/deep.png", lambda p: write_png(p, IMAGE.astype(np.uint16) * 257))),
    ("monochrome2-dicom-without-masks", lambda d: (
        write_dicom(d.parent / "images" / "ok.dcm", pixels=IMAGE.astype(np.uint16)),
        edit_datalist(d, lambda c: c["training"].__setitem__(0, {"image": "images/ok.dcm", "label": 0})))),
    ("empty-lesion-mask", replace_image("lesions/none.png", lambda p: write_png(p, MASK * 0), key="lesion")),
    ("null-and-empty-mask-paths-mean-absent",
     lambda d: edit_datalist(d, lambda c: c["training"][0].update(organ=None, lesion=""))),
    ("0-1-mask", replace_image("lesions/ones.png", lambda p: write_png(p, MASK // 255), key="lesion")),
]


@pytest.mark.parametrize("mutate", [c[1] for c in ACCEPTED_CASES], ids=[c[0] for c in ACCEPTED_CASES])
def test_check_datalist_accepts(tmp_path, mutate):
    datalist = write_dataset(tmp_path / "data")
    mutate(datalist)
    assert check_datalist(datalist) == datalist


def add_healthy_validation_item(datalist: Path) -> None:
    edit_datalist(datalist, lambda c: c["validation"].append(c["training"][0]))


SPLIT_CASES = [  # (id, mutate(datalist), check_datalist keyword arguments, fragments, fragments that must be absent)
    ("mistyped-split", lambda d: None, {"splits": ["holdout"]},
     ["split 'holdout' is missing", "the datalist's splits are ['training', 'validation', 'test']",
      "split override, e.g. --inference_split test", "--eval_split"], ["re-split"]),
    ("mistyped-split-without-test", lambda d: edit_datalist(d, lambda c: c.pop("test")), {"splits": ["tset"]},
     ["split 'tset' is missing", "splits are ['training', 'validation']", "--inference_split training"],
     ["re-split"]),
    ("missing-standard-split", lambda d: edit_datalist(d, lambda c: c.pop("test")), {"splits": ["test"]},
     ["split 'test' is missing", "splits are ['training', 'validation']", "re-split the data set"],
     ["--inference_split"]),
    ("no-split-at-all", lambda d: d.write_text('{"name": "x"}'), {"splits": ["holdout"]},
     ["split 'holdout' is missing", "splits are []", "re-split the data set"], ["--inference_split"]),
    ("one-class-validation", lambda d: None, {"both_classes": ["validation"]},
     ["datalist.json: 1 problem(s)", "split 'validation' holds 0 healthy (label 0) and 1 pathological (label 1)",
      "expected both classes", "ROC-AUC", "re-split the data set by label"], ["training"]),
    ("one-class-training", lambda d: edit_datalist(d, lambda c: c["training"][1].update(label=0)),
     {"both_classes": ["training", "validation"]},
     ["2 problem(s)", "split 'training' holds 2 healthy (label 0) and 0 pathological", "split 'validation' holds 0"],
     []),
    ("both-classes-split-missing", lambda d: None, {"both_classes": ["holdout"]},
     ["split 'holdout' is missing", "--inference_split test"], []),
]


@pytest.mark.parametrize("mutate, kwargs, fragments, absent", [c[1:] for c in SPLIT_CASES],
                         ids=[c[0] for c in SPLIT_CASES])
def test_check_datalist_refuses_splits(tmp_path, mutate, kwargs, fragments, absent):
    datalist = write_dataset(tmp_path / "data")
    mutate(datalist)
    with pytest.raises(DatalistError) as info:
        check_datalist(datalist, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)
    for fragment in absent:
        assert fragment not in str(info.value)


SPLIT_ACCEPTED_CASES = [  # (id, mutate(datalist), check_datalist keyword arguments) the checker must accept
    ("one-class-validation-by-default", lambda d: None, {}),
    ("other-split-picked", lambda d: None, {"splits": ["test"]}),
    ("both-classes-present", add_healthy_validation_item, {"both_classes": ["training", "validation"]}),
    ("both-classes-split-not-in-splits", add_healthy_validation_item,
     {"splits": ["test"], "both_classes": ["validation"]}),
]


@pytest.mark.parametrize(
    "mutate, kwargs", [c[1:] for c in SPLIT_ACCEPTED_CASES], ids=[c[0] for c in SPLIT_ACCEPTED_CASES]
)
def test_check_datalist_accepts_splits(tmp_path, mutate, kwargs):
    datalist = write_dataset(tmp_path / "data")
    mutate(datalist)
    assert check_datalist(datalist, **kwargs) == datalist


def test_check_datalist_lists_every_problem(tmp_path):
    """All problems in one error (a user fixes the data set once, not once per run)."""
    datalist = write_dataset(tmp_path / "data")
    for name in ("0.png", "1.png", "2.png"):
        (datalist.parent / "organs" / name).write_bytes(b"broken")
    with pytest.raises(DatalistError, match=r"3 problem\(s\)") as info:
        check_datalist(datalist)
    assert all(f"organs/{n} cannot be read" in str(info.value) for n in ("0.png", "1.png", "2.png"))


PAIR_CASES = [  # (id, pairs built from (image path, hole path, folder), fragments of the DatalistError)
    ("empty-list", lambda i, h, d: [], ["no image + hole pairs were given", "pairs=["]),
    ("not-a-list", lambda i, h, d: {"image": i}, ["no image + hole pairs were given"]),
    ("no-hole", lambda i, h, d: [{"image": i}], ["pair 0 lacks 'hole'", "white = the region to replace"]),
    ("missing-hole-file", lambda i, h, d: [{"image": i, "hole": str(d / "nope.png")}],
     ["pair 0 hole", "nope.png does not exist", "relative to the working directory"]),
    ("hole-of-another-size", lambda i, h, d: [{"image": i, "hole": str(write_png(d / "big.png", np.pad(MASK, 4)))}],
     ["big.png is 56×48, expected the size of its image 48×40", "resize it"]),
    ("hole-not-binary", lambda i, h, d: [{"image": i, "hole": str(write_png(d / "soft.png", MASK // 2 + 3))}],
     ["soft.png holds values", "expected a binary mask"]),
    ("hole-is-everything", lambda i, h, d: [{"image": i, "hole": str(write_png(d / "all.png", MASK * 0 + 255))}],
     ["all.png covers the whole image", "no context left"]),
    ("nan-image", lambda i, h, d: [{"image": str(with_nan(np.nan)(d / "nan.nii.gz")), "hole": h}],
     ["nan.nii.gz has 1 NaN/Inf pixel(s)"]),
    ("second-pair-bad", lambda i, h, d: [{"image": i, "hole": h}, {"image": str(d / "gone.png"), "hole": h}],
     ["1 problem(s)", "pair 1 image", "gone.png does not exist"]),
    ("rgb-hole", lambda i, h, d: [{"image": i, "hole": h}, {"image": i, "hole": str(
        write_png(d / "rgb.png", np.stack([MASK] * 3, -1)))}],
     ["1 problem(s)", "pair 1 hole", "rgb.png is a 3-channel (e.g. RGB) array", "single-channel 8-bit PNG"]),
    ("hole-number", lambda i, h, d: [{"image": i, "hole": 7}],
     ["pair 0 hole is 7 (int), expected a file path string", "relative to the working directory"]),
    ("image-null", lambda i, h, d: [{"image": None, "hole": h}],
     ["pair 0 image is null (NoneType), expected a file path string"]),
    ("image-list", lambda i, h, d: [{"image": [i], "hole": h}], ["pair 0 image is [", "(list), expected a file path"]),
]


@pytest.mark.parametrize("make_pairs, fragments", [c[1:] for c in PAIR_CASES], ids=[c[0] for c in PAIR_CASES])
def test_check_pairs_refuses(tmp_path, make_pairs, fragments):
    image, hole = write_png(tmp_path / "image.png", IMAGE), write_png(tmp_path / "hole.png", MASK)
    with pytest.raises(DatalistError) as info:
        check_pairs(make_pairs(str(image), str(hole), tmp_path))
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("hole", [MASK, MASK // 255, MASK * 0])  # {0, 255}, {0, 1}, no hole at all
def test_check_pairs_accepts(tmp_path, hole):
    pairs = [{"image": str(write_png(tmp_path / "image.png", IMAGE)), "hole": str(write_png(tmp_path / "h.png", hole))}]
    assert check_pairs(pairs) is pairs


def test_rgb_and_16_bit_are_converted_by_explain_input(tmp_path):
    """``cfattr explain`` input: colour → grey by luminance with a warning; 16-bit scaled by its own range."""
    with pytest.warns(UserWarning, match="rgb.png: 3-channel colour image converted to grey"):
        grey = load_image(write_png(tmp_path / "rgb.png", np.stack([IMAGE] * 3, -1)))
    deep = load_image(write_png(tmp_path / "deep.png", IMAGE.astype(np.uint16) * 257))
    assert grey.shape == deep.shape == (1, COLS, ROWS)
    torch.testing.assert_close(grey, deep, atol=1e-3, rtol=0)


# ------------------------------------------------------------------ tiny trained-looking bundles (random weights)


def _parse(bundle: Path, config: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    parser.update(overrides)
    return parser


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    """Copies of the three bundles' configs with random weights saved as models/model.pt, and the fingerprint."""
    root = tmp_path_factory.mktemp("bundles")
    for name in ("classifier", "inpainter", "attributor"):
        shutil.copytree(REPO_ROOT / "bundles" / name / "configs", root / name / "configs")
        (root / name / "models").mkdir()
    torch.manual_seed(0)
    networks = {}
    for name in ("classifier", "inpainter"):
        networks[name] = _parse(root / name, "inference.json").get_parsed_content("network_def")
        torch.save(networks[name].state_dict(), root / name / "models" / "model.pt")
    attributor = _parse(root / "attributor", "inference.json", classifier=networks["classifier"])
    torch.save(attributor.get_parsed_content("network_def").state_dict(), root / "attributor" / "models" / "model.pt")
    write_classifier_fingerprint(networks["classifier"], root / "attributor" / "models")
    return root


def explain(bundles: Path, tmp_path: Path, image: Path, capsys) -> tuple[int, str, Path]:
    out = tmp_path / "out"
    code = main(["explain", str(image), "--bundle", str(bundles / "attributor"), "--out", str(out), "--no-progress"])
    return code, capsys.readouterr().err, out


def written(name: str, writer: Callable[[Path], object] | None) -> Callable[[Path], Path]:
    """Write ``folder/name`` with ``writer`` and return its path (``writer=None``: a name that is never written)."""

    def write(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if writer is not None:
            writer(folder / name)
        return folder / name

    return write


CLI_IMAGE_CASES = [  # (id, writer of the one input image into a folder, stderr fragments)
    ("corrupt-png", written("x.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n junk")),
     ["x.png: cannot read the image", "corrupt or truncated", "re-export"]),
    ("truncated-png", written("x.png", truncated_png), ["x.png: cannot read the image"]),
    ("truncated-dicom", written("x.dcm", truncated_dicom), ["x.dcm", "truncated"]),
    ("dicom-without-pixel-data", written("x.dcm", lambda p: write_dicom(p, PixelData=None)),
     ["x.dcm", "without pixel data"]),
    ("nan-pixels", written("x.nii.gz", with_nan(np.nan)), ["x.nii.gz: 1 NaN/Inf pixel(s)", "nan_to_num"]),
    ("inf-pixels", written("x.nii.gz", with_nan(-np.inf)), ["x.nii.gz: 1 NaN/Inf pixel(s)"]),
    ("constant-image", written("x.png", lambda p: write_png(p, np.zeros_like(IMAGE))),
     ["x.png: constant image", "check the export"]),
    ("missing-input", written("x.png", None), ["x.png' does not exist", "pass image files or folders"]),
]


@pytest.mark.parametrize("writer, fragments", [c[1:] for c in CLI_IMAGE_CASES], ids=[c[0] for c in CLI_IMAGE_CASES])
def test_cli_explain_refuses_image(bundles, tmp_path, capsys, writer, fragments):
    code, err, out = explain(bundles, tmp_path, writer(tmp_path / "in"), capsys)
    assert code == 2
    assert err.startswith("cfattr explain: error:")
    for fragment in fragments:
        assert fragment in err
    assert not out.exists() or not list(out.glob("x_*"))
    assert_nothing_partial(out)


@pytest.fixture
def bundles_copy(bundles, tmp_path) -> Path:
    """A writable copy of ``bundles`` for cases that break one of them."""
    return Path(shutil.copytree(bundles, tmp_path / "bundles"))


def _other_backbone(root: Path) -> None:
    network = _parse(root / "classifier", "inference.json", width_mult=0.25).get_parsed_content("network_def")
    torch.save(network.state_dict(), root / "classifier" / "models" / "model.pt")


def _trainer_checkpoint(root: Path) -> None:
    state = torch.load(root / "classifier" / "models" / "model.pt", weights_only=True)
    torch.save({"model": state, "trainer": {"epoch": 3}}, root / "classifier" / "models" / "model.pt")


def _retrained_classifier(root: Path) -> None:
    state = torch.load(root / "classifier" / "models" / "model.pt", weights_only=True)
    torch.save({k: v + 1e-3 if v.is_floating_point() else v for k, v in state.items()},
               root / "classifier" / "models" / "model.pt")


def _attributor_of_another_training(root: Path) -> None:
    """``model.pt`` of an attributor trained on another classifier, beside this bundle's fingerprint file."""
    path = root / "attributor" / "models" / "model.pt"
    state = torch.load(path, weights_only=True)
    frozen = ("classifier.", "encoder.")
    torch.save({k: v + 1e-3 if k.startswith(frozen) and v.is_floating_point() else v for k, v in state.items()}, path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _nan_weights(root: Path) -> None:
    state = torch.load(root / "classifier" / "models" / "model.pt", weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first].clone().fill_(float("nan"))
    torch.save(state, root / "classifier" / "models" / "model.pt")


CLI_BUNDLE_CASES = [  # (id, break(bundles root), stderr fragments)
    ("classifier-checkpoint-for-another-backbone", _other_backbone,
     ["classifier/models/model.pt was saved from another network than MobileNetV1", "shape mismatch",
      "Use the task overlays"]),
    ("checkpoint-is-not-a-state-dict", _trainer_checkpoint,
     ["classifier/models/model.pt holds a dict of non-tensors, keys model, trainer", "expected a state dict",
      "trainer checkpoints (models/checkpoint*.pt) are for resuming"]),
    ("checkpoint-is-not-a-torch-file", lambda r: (r / "inpainter/models/model.pt").write_bytes(b"not a checkpoint"),
     ["inpainter/models/model.pt is not a checkpoint torch.load can read with weights_only=True",
      "do not load it with weights_only=False"]),
    ("checkpoint-is-empty", lambda r: (r / "classifier/models/model.pt").write_bytes(b""),
     ["classifier/models/model.pt is not a checkpoint torch.load can read", "EOFError", "empty"]),
    ("checkpoint-is-a-text-file", lambda r: (r / "classifier/models/model.pt").write_text("hello world\n"),
     ["classifier/models/model.pt is not a checkpoint torch.load can read", "Re-train or re-copy"]),
    ("checkpoint-is-truncated", lambda r: _truncate(r / "inpainter/models/model.pt"),
     ["inpainter/models/model.pt is not a checkpoint torch.load can read", "truncated"]),
    ("checkpoint-holds-nan", _nan_weights,
     ["classifier/models/model.pt: 1 tensor(s) hold NaN or Inf", "diverged"]),
    ("missing-inpainter", lambda r: shutil.rmtree(r / "inpainter" / "models"),
     ["inpainter/models/model.pt not found", "train the bundle first"]),
    ("attributor-checkpoint-is-not-a-state-dict",
     lambda r: torch.save({"network": {}, "epoch": 2}, r / "attributor/models/model.pt"),
     ["attributor/models/model.pt holds a dict of non-tensors, keys network, epoch", "expected a state dict"]),
    ("attributor-checkpoint-of-another-configuration",
     lambda r: torch.save({"w": torch.zeros(1)}, r / "attributor/models/model.pt"),
     ["attributor/models/model.pt was saved from another network than AttentionGatedUNet", "unexpected (1): w"]),
    ("classifier-other-than-trained-with", _retrained_classifier,
     ["differ from those the attributor was trained with", "retrain the attributor"]),
    ("attributor-checkpoint-of-another-training", _attributor_of_another_training,
     ["classifier weights stored in", "attributor/models/model.pt", "come from different trainings"]),
    ("attributor-without-fingerprint", lambda r: (r / "attributor/models/classifier_fingerprint.json").unlink(),
     ["classifier_fingerprint.json not found", "train the attributor bundle"]),
    ("fingerprint-is-not-json", lambda r: (r / "attributor/models/classifier_fingerprint.json").write_text("{"),
     ["classifier_fingerprint.json is not the JSON", "retrain the attributor"]),
    ("fingerprint-without-sha256", lambda r: (r / "attributor/models/classifier_fingerprint.json").write_text("{}"),
     ["classifier_fingerprint.json is not the JSON", "sha256"]),
]


@pytest.mark.parametrize("breaks, fragments", [c[1:] for c in CLI_BUNDLE_CASES], ids=[c[0] for c in CLI_BUNDLE_CASES])
def test_cli_explain_refuses_bundle(bundles_copy, tmp_path, capsys, breaks, fragments):
    breaks(bundles_copy)
    code, err, out = explain(bundles_copy, tmp_path, write_png(tmp_path / "in" / "x.png", IMAGE), capsys)
    assert code == 2
    for fragment in fragments:
        assert fragment in err
    assert not out.exists(), "the explainer is loaded before any output is written"


def test_cli_explain_accepts_good_input(bundles, tmp_path, capsys):
    """The same fixture explains a 16-bit PNG and a MONOCHROME1 DICOM: the refusals above are not blanket ones."""
    inputs = tmp_path / "in"
    write_png(inputs / "deep.png", IMAGE.astype(np.uint16) * 257)
    write_dicom(inputs / "m1.dcm", pixels=4080 - IMAGE.astype(np.uint16) * 16, photometric="MONOCHROME1")
    code, err, out = explain(bundles, tmp_path, inputs, capsys)
    assert code == 0, err
    assert {"deep_overlay.png", "explanations.csv"} <= {p.name for p in out.iterdir()}
    assert_nothing_partial(out)


def test_load_network_refuses_checkpoint_of_other_backbone(bundles_copy):
    _other_backbone(bundles_copy)
    with pytest.raises(ValueError, match=r"another network than MobileNetV1 configured by .*inference.json"):
        load_network(bundles_copy / "classifier")


# ---------------------------------------------------------------------------- data preparation via the CLI

CLI_DATA_CASES = [  # (id, argv with {tmp}, stderr fragments, output folder that must not appear)
    ("prepare-missing-source", ["prepare", "mini-mias", "--src", "{tmp}/nowhere", "--out", "{tmp}/out"],
     ["holds neither labels.csv", "point --src at the folder"], "out"),
    ("phantoms-too-few", ["phantoms", "--n", "4", "--size", "32", "--out", "{tmp}/out"],
     ["n must be at least 10"], "out"),
    ("phantoms-into-foreign-folder", ["phantoms", "--n", "10", "--size", "32", "--out", "{tmp}/foreign"],
     ["foreign exists and is not empty", "choose a new or empty folder"], None),
]


@pytest.mark.parametrize("argv, fragments, absent", [c[1:] for c in CLI_DATA_CASES], ids=[c[0] for c in CLI_DATA_CASES])
def test_cli_data_commands_refuse(tmp_path, capsys, argv, fragments, absent):
    write_png(tmp_path / "foreign" / "keep.png", IMAGE)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err
    assert absent is None or not (tmp_path / absent).exists()
    assert [p.name for p in (tmp_path / "foreign").iterdir()] == ["keep.png"]
    assert_nothing_partial(tmp_path)


# ------------------------------------------------------------------------------ the bundles' initialize step

BUNDLE_DATA_CASES = [  # (id, bundle, mutate(datalist), message fragments): each train.json checks its datalist
    ("classifier-corrupt-image", "classifier",
     replace_image("images/bad.png", lambda p: p.write_bytes(b"junk")), ["bad.png cannot be read"]),
    ("inpainter-organ-of-another-size", "inpainter",
     replace_image("organs/big.png", lambda p: write_png(p, np.pad(MASK, 2)), key="organ"),
     ["organ", "big.png is 52×44", "expected the size of its image"]),
    ("attributor-empty-split", "attributor",
     lambda d: edit_datalist(d, lambda c: c.update(training=[])), ["split 'training' is []"]),
]


@pytest.mark.parametrize("bundle, mutate, fragments", [c[1:] for c in BUNDLE_DATA_CASES],
                         ids=[c[0] for c in BUNDLE_DATA_CASES])
def test_bundle_initialize_refuses_datalist(bundles, tmp_path, bundle, mutate, fragments):
    datalist = write_dataset(tmp_path / "data")
    mutate(datalist)
    root = tmp_path / bundle
    shutil.copytree(bundles / bundle / "configs", root / "configs")
    parser = _parse(root, "train.json", datalist=str(datalist), phantoms={},
                    classifier_bundle=str(bundles / "classifier"), inpainter_bundle=str(bundles / "inpainter"))
    message = raised(DatalistError, lambda: parser.get_parsed_content("initialize"))
    for fragment in fragments:
        assert fragment in message
    assert not (root / "models").exists() or not list((root / "models").glob("*.pt"))


CLASSIFIER_INFERENCE_CASES = [  # (id, break(datalist, bundle copy), error type, fragments)
    ("nan-test-image", lambda d, b: replace_image("images/nan.nii.gz", with_nan(np.nan), split="test")(d),
     DatalistError, ["nan.nii.gz has 1 NaN/Inf pixel(s)"]),
    ("empty-test-split", lambda d, b: edit_datalist(d, lambda c: c.update(test=[])),
     DatalistError, ["split 'test' is []", "non-empty list"]),
    ("inpainter-weights-as-classifier", lambda d, b: shutil.copy(b / "inpainter/models/model.pt", b / "classifier/models/model.pt"),
     ValueError, ["classifier/models/model.pt was saved from another network than MobileNetV1"]),
    ("empty-checkpoint", lambda d, b: (b / "classifier/models/model.pt").write_bytes(b""),
     ValueError, ["classifier/models/model.pt is not a checkpoint torch.load can read"]),
]


@pytest.mark.parametrize("breaks, error, fragments", [c[1:] for c in CLASSIFIER_INFERENCE_CASES],
                         ids=[c[0] for c in CLASSIFIER_INFERENCE_CASES])
def test_classifier_inference_refuses_before_writing(bundles_copy, tmp_path, breaks, error, fragments):
    """Inference and evaluation check the split and the weights first: an earlier predictions.csv stays."""
    datalist = write_dataset(tmp_path / "data")
    edit_datalist(datalist, lambda c: c["test"].append(c["training"][0]))  # both classes, as evaluation's AUC needs
    breaks(datalist, bundles_copy)
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("earlier,0.5\n")
    for configs in (["inference.json"], ["train.json", "evaluate.json"]):
        parser = ConfigParser()
        parser.read_config([str(bundles_copy / "classifier" / "configs" / c) for c in configs])
        parser.update({"bundle_root": str(bundles_copy / "classifier"), "datalist": str(datalist), "phantoms": {},
                       "output_dir": str(out)})
        message = raised(error, lambda: parser.get_parsed_content("initialize"))
        for fragment in fragments:
            assert fragment in message, configs
    assert (out / "predictions.csv").read_text() == "earlier,0.5\n"


def test_attributor_inference_checks_its_split(bundles, tmp_path):
    datalist = write_dataset(tmp_path / "data")
    edit_datalist(datalist, lambda c: c.update(test=[]))
    parser = _parse(bundles / "attributor", "inference.json", datalist=str(datalist))
    assert "split 'test' is []" in raised(DatalistError, lambda: parser.get_parsed_content("input_files"))


def test_attributor_training_without_inpainter(bundles, tmp_path):
    """The attributor bundle names the missing inpainter bundle and how to make it."""
    parser = _parse(bundles / "attributor", "train.json", inpainter_bundle=str(tmp_path / "inpainter"))
    message = raised(FileNotFoundError, lambda: parser.get_parsed_content("inpainter"))
    assert "inpainter/configs/inference.json not found" in message and "pass the bundle folder" in message
