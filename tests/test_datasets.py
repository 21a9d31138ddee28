import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cfattr_monai.data.cbis_ddsm import prepare_cbis_ddsm, read_dicom
from cfattr_monai.data.datalist import grouped_split, staged_folder
from cfattr_monai.data.datasets import parse_mias_info, prepare_mini_mias, prepare_shenzhen
from cfattr_monai.data.organ import breast_mask

SIZE = 64


def _mammogram(seed: int, side: str = "left") -> np.ndarray:
    """A 64² film-like mammogram: black padding, a half-disc breast at the chest wall, a bright film label."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    breast = (rows - 32) ** 2 + cols**2 < 28**2
    image = np.where(breast, 110 + np.random.default_rng(seed).integers(0, 40, (SIZE, SIZE)), 3)
    image[4:9, 50:58] = 250  # film label, away from the breast
    image = image.astype(np.uint8)
    return image if side == "left" else image[:, ::-1].copy()


def _read(folder: Path, relative: str) -> np.ndarray:
    return np.asarray(Image.open(folder / relative))


def _items(datalist: Path) -> dict[str, list[dict]]:
    return json.loads(datalist.read_text())


def _assert_schema(datalist: Path, patient_of) -> None:
    """Datalist keys, files present, binary masks, and every patient in exactly one split."""
    content = _items(datalist)
    assert set(content) == {"training", "validation", "test"}
    owner = {}
    for split, items in content.items():
        for item in items:
            assert {"image", "label"} <= set(item) <= {"image", "label", "lesion", "organ"}
            assert item["label"] in (0, 1)
            for key in ("image", "lesion", "organ"):
                if key in item:
                    assert (datalist.parent / item[key]).is_file()
            for key in ("lesion", "organ"):
                if key in item:
                    assert set(np.unique(_read(datalist.parent, item[key]))) <= {0, 255}
            patient = patient_of(item)
            assert owner.setdefault(patient, split) == split, f"patient {patient} in two splits"


# ---------------------------------------------------------------- mini-MIAS, original distribution

INFO_HEADER = "MIAS MiniMammographic Database\n\nmdbNNN lines follow\n=====\n"
INFO_LINES = [
    "mdb001 G CIRC B 20 40 6",  # centre (20, 40) from the bottom-left: row 64 - 40 = 24
    "mdb002 G NORM ",
    "mdb003 D SPIC M 15 20 5",
    "mdb003 D SPIC M 18 30 4",
    "mdb004 D NORM",
    "mdb005 F CALC B 20 20 3",  # calcification only: no normal-vs-mass label
    "mdb006 F NORM",
    "mdb007 F CIRC B",  # a mass without coordinates
    "mdb008 F NORM",
    "mdb009 G CALC M *NOTE 3*",
    "mdb010 G NORM",
]


@pytest.fixture
def mias_distribution(tmp_path) -> Path:
    src = tmp_path / "all-mias"
    src.mkdir()
    (src / "Info.txt").write_text(INFO_HEADER + "\n".join(INFO_LINES) + "\n\n=====\n")
    for number in range(1, 11):
        side = "left" if number % 2 == 0 else "right"
        Image.fromarray(_mammogram(number, side)).save(src / f"mdb{number:03d}.pgm")
    return src


def test_parse_mias_info(mias_distribution):
    entries = parse_mias_info(mias_distribution / "Info.txt")
    assert len(entries) == 10
    assert entries["mdb003"]["circles"] == [(15.0, 20.0, 5.0), (18.0, 30.0, 4.0)]
    assert entries["mdb007"] == {"classes": {"CIRC"}, "circles": []}
    assert entries["mdb009"]["classes"] == {"CALC"}


@pytest.mark.parametrize(
    "line",
    ["mdb011 X NORM", "mdb011 G CIRC B 10 20", "mdb011 G TUMOR", "mdb011G NORM", "mdb011 G CIRC B ten 20 3"],
)
def test_mias_info_line_that_does_not_parse(mias_distribution, line):
    info = mias_distribution / "Info.txt"
    info.write_text(info.read_text() + line + "\n")
    number = len(info.read_text().splitlines())
    with pytest.raises(ValueError, match=rf"Info\.txt:{number}: cannot parse '{line}'"):
        parse_mias_info(info)


@pytest.mark.parametrize("size", [None, (32, 48)])
def test_mini_mias_distribution(mias_distribution, tmp_path, size):
    datalist = prepare_mini_mias(mias_distribution, tmp_path / "out", size=size, seed=1, splits=(0.4, 0.2, 0.4))
    _assert_schema(datalist, patient_of=lambda item: (int(Path(item["image"]).stem[3:]) + 1) // 2)
    items = {Path(i["image"]).stem: i for part in _items(datalist).values() for i in part}
    assert sorted(items) == ["mdb001", "mdb002", "mdb003", "mdb004", "mdb006", "mdb007", "mdb008", "mdb010"]
    assert {k for k, v in items.items() if v["label"] == 1} == {"mdb001", "mdb003", "mdb007"}
    assert "lesion" not in items["mdb007"]  # a mass without coordinates has no ground truth
    assert not _read(datalist.parent, items["mdb002"]["lesion"]).any()
    image = _read(datalist.parent, items["mdb001"]["image"])
    assert image.shape == (size or (SIZE, SIZE))
    if size is None:
        lesion = _read(datalist.parent, items["mdb001"]["lesion"]) > 0
        rows, cols = np.nonzero(lesion)
        assert abs(rows.mean() - (SIZE - 40)) < 1 and abs(cols.mean() - 20) < 1  # origin at the bottom-left
        assert lesion.sum() == pytest.approx(np.pi * 6**2, rel=0.15)
        organ = _read(datalist.parent, items["mdb002"]["organ"]) > 0
        assert organ[32, 5] and not organ[6, 54]  # breast kept, film label dropped
    source = json.loads((datalist.parent / "source.json").read_text())
    assert source["layout"] == "pgm+Info.txt"


def test_mini_mias_missing_image(mias_distribution, tmp_path):
    (mias_distribution / "mdb004.pgm").unlink()
    with pytest.raises(FileNotFoundError, match="mdb004.pgm"):
        prepare_mini_mias(mias_distribution, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "preparer,match",
    [(prepare_mini_mias, "neither labels.csv"), (prepare_shenzhen, "no Shenzhen/Montgomery image"),
     (prepare_cbis_ddsm, "healthy-image folder")],
)
def test_empty_source_folder(tmp_path, preparer, match):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=match):
        preparer(tmp_path / "empty", tmp_path / "out")


def test_output_folder_not_empty(mias_distribution, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        prepare_mini_mias(mias_distribution, tmp_path / "out")


# ---------------------------------------------------------------- mini-MIAS, PNG layout


@pytest.fixture
def mias_png_layout(tmp_path) -> Path:
    src = tmp_path / "mini_mias"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    rows = []
    for number in range(1, 9):
        ref = f"mdb{number:03d}"
        Image.fromarray(_mammogram(number)).save(src / "images" / f"{ref}.png")
        label = "" if number == 5 else str(int(number in (1, 3)))
        mask = ""
        if label == "1":
            mask = f"masks/{ref}_mask.png"
            disc = np.zeros((SIZE, SIZE), np.uint8)
            disc[28:36, 10:18] = 255
            Image.fromarray(disc).save(src / mask)
        rows.append({"refnum": ref, "image": f"images/{ref}.png", "mask": mask, "patient_pair": (number + 1) // 2,
                     "label_normal_vs_mass": label})
    with (src / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return src


def test_mini_mias_png_layout(mias_png_layout, tmp_path):
    datalist = prepare_mini_mias(mias_png_layout, tmp_path / "out", seed=0, splits=(0.5, 0.25, 0.25))
    _assert_schema(datalist, patient_of=lambda item: (int(Path(item["image"]).stem[3:]) + 1) // 2)
    items = {Path(i["image"]).stem: i for part in _items(datalist).values() for i in part}
    assert "mdb005" not in items and len(items) == 7
    assert _read(datalist.parent, items["mdb003"]["lesion"]).sum() == 64 * 255


def test_mini_mias_png_layout_missing_image(mias_png_layout, tmp_path):
    (mias_png_layout / "images" / "mdb002.png").unlink()
    with pytest.raises(FileNotFoundError, match="mdb002.png"):
        prepare_mini_mias(mias_png_layout, tmp_path / "out")


# ---------------------------------------------------------------- Shenzhen / Montgomery


@pytest.fixture
def chest_folder(tmp_path) -> Path:
    src = tmp_path / "cxr"
    for folder in ("ChinaSet/CXR_png", "MontgomerySet/CXR_png", "MontgomerySet/ManualMask/leftMask",
                   "MontgomerySet/ManualMask/rightMask"):
        (src / folder).mkdir(parents=True)
    grey = np.full((40, 40, 3), 90, np.uint8)
    for number in range(1, 7):
        Image.fromarray(grey).save(src / "ChinaSet/CXR_png" / f"CHNCXR_{number:04d}_{number % 2}.png")
    for number in range(1, 5):
        name = f"MCUCXR_{number:04d}_{number % 2}.png"
        Image.fromarray(grey[..., 0]).save(src / "MontgomerySet/CXR_png" / name)
        for side, cols in (("leftMask", slice(5, 15)), ("rightMask", slice(25, 35))):
            lung = np.zeros((40, 40), np.uint8)
            lung[5:35, cols] = 255
            Image.fromarray(lung).save(src / "MontgomerySet/ManualMask" / side / name)
    (src / "ChinaSet/CXR_png/Thumbs.png").write_bytes(b"not matched by the name pattern")
    return src


def test_shenzhen_montgomery(chest_folder, tmp_path):
    datalist = prepare_shenzhen(chest_folder, tmp_path / "out", size=(32, 32), seed=3)
    _assert_schema(datalist, patient_of=lambda item: Path(item["image"]).stem[:-2])
    items = {Path(i["image"]).stem: i for part in _items(datalist).values() for i in part}
    assert len(items) == 10
    assert all(item["label"] == int(stem[-1]) for stem, item in items.items())
    assert all(("organ" in item) == stem.startswith("MCU") for stem, item in items.items())
    organ = _read(datalist.parent, items["MCUCXR_0001_1"]["organ"]) > 0
    assert organ.shape == (32, 32) and 0.3 < organ.mean() < 0.6
    assert _read(datalist.parent, items["CHNCXR_0001_1"]["image"]).shape == (32, 32)


def test_shenzhen_alone_writes_no_organ_folder(chest_folder, tmp_path):
    datalist = prepare_shenzhen(chest_folder / "ChinaSet", tmp_path / "out", size=(32, 32), seed=3)
    assert sorted(p.name for p in datalist.parent.iterdir() if p.is_dir()) == ["images", "lesions"]
    assert not any("organ" in item for part in _items(datalist).values() for item in part)


# ---------------------------------------------------------------- CBIS-DDSM


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", patient: str = "P_00001"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientID = patient
    if pixels is not None:
        dataset.Rows, dataset.Columns = pixels.shape
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
        dataset.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)


@pytest.fixture
def cbis_folder(tmp_path) -> Path:
    src = tmp_path / "CBIS-DDSM"
    roi = np.zeros((SIZE, SIZE), np.uint16)
    roi[20:30, 10:20] = 255
    rows = []
    for number, photometric in ((1, "MONOCHROME2"), (2, "MONOCHROME1"), (3, "MONOCHROME2")):
        series = f"Mass-Training_P_{number:05d}_LEFT_CC"
        film = _mammogram(number).astype(np.uint16) * 16
        if photometric == "MONOCHROME1":
            film = 4095 - film
        _write_dicom(src / series / "1.2.3" / "1.2.4" / "000000.dcm", film, photometric, f"P_{number:05d}")
        # TCIA renames the folders below the series: the CSV path does not exist as written
        _write_dicom(src / f"{series}_1" / "07-20-2016-DDSM" / "1.000-ROI" / "1-1.dcm", roi[:8, :8], "MONOCHROME2")
        _write_dicom(src / f"{series}_1" / "07-20-2016-DDSM" / "1.000-ROI" / "1-2.dcm", roi, "MONOCHROME2")
        rows.append({"patient_id": f"P_{number:05d}", "left or right breast": "LEFT", "image view": "CC",
                     "image file path": f"{series}/1.2.3/1.2.4/000000.dcm",
                     "ROI mask file path": f"{series}_1/9.9.9/9.9.8/000001.dcm"})
    with (src / "mass_case_description_train_set.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for number in range(4):
        _write_dicom(src / "healthy" / f"normal_{number}.dcm", _mammogram(10 + number).astype(np.uint16),
                     patient=f"N_{number // 2}")
    Image.fromarray(_mammogram(20)).save(src / "healthy" / "B_3001_1.LEFT_MLO.png")
    return src


def test_read_dicom_inverts_monochrome1(cbis_folder):
    plain = read_dicom(next((cbis_folder / "Mass-Training_P_00001_LEFT_CC").rglob("*.dcm")))
    inverted = read_dicom(next((cbis_folder / "Mass-Training_P_00002_LEFT_CC").rglob("*.dcm")))
    assert plain.dtype == np.float32 and 0.0 <= plain.min() and plain.max() <= 1.0
    for image in (plain, inverted):  # breast bright, padding dark in both
        assert image[32, 5] > 0.3 and image[60, 60] < 0.1


def test_cbis_ddsm(cbis_folder, tmp_path):
    datalist = prepare_cbis_ddsm(cbis_folder, tmp_path / "out", size=(48, 48), seed=0, splits=(0.5, 0.25, 0.25))
    patients = {"Mass-Training_P_00001_LEFT_CC": "P1", "Mass-Training_P_00002_LEFT_CC": "P2",
                "Mass-Training_P_00003_LEFT_CC": "P3", "healthy_normal_0": "N0", "healthy_normal_1": "N0",
                "healthy_normal_2": "N1", "healthy_normal_3": "N1", "healthy_B_3001_1.LEFT_MLO": "B3001"}
    _assert_schema(datalist, patient_of=lambda item: patients[Path(item["image"]).stem])
    items = {Path(i["image"]).stem: i for part in _items(datalist).values() for i in part}
    assert set(items) == set(patients)
    assert sum(item["label"] for item in items.values()) == 3
    lesion = _read(datalist.parent, items["Mass-Training_P_00002_LEFT_CC"]["lesion"]) > 0
    rows, cols = np.nonzero(lesion)
    assert lesion.shape == (48, 48) and abs(rows.mean() - 18.4) < 1.5 and abs(cols.mean() - 11.3) < 1.5
    assert all("organ" in item for item in items.values())


@pytest.mark.parametrize(
    "break_it,error,match",
    [
        (lambda src: (src / "healthy" / "normal_0.dcm").write_bytes(b"plain text, not DICOM"), ValueError,
         "normal_0.dcm is not a DICOM file"),
        (lambda src: _write_dicom(src / "healthy" / "normal_1.dcm", None), ValueError,
         "normal_1.dcm is a DICOM without pixel data"),
        (lambda src: [p.unlink() for p in (src / "Mass-Training_P_00003_LEFT_CC").rglob("*.dcm")], FileNotFoundError,
         "Mass-Training_P_00003_LEFT_CC/1.2.3"),
        (lambda src: (src / "mass_case_description_train_set.csv").write_text("patient_id,view\nP_1,CC\n"),
         ValueError, "lacks the column"),
    ],
)
def test_cbis_ddsm_bad_input(cbis_folder, tmp_path, break_it, error, match):
    break_it(cbis_folder)
    with pytest.raises(error, match=match):
        prepare_cbis_ddsm(cbis_folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- splits and organ masks


@pytest.mark.parametrize(
    "groups,labels",
    [
        (["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"], [0, 1, 0, 0, 1, 0, 0, 0, 1, 1]),
        ([f"p{i // 3}" for i in range(30)], [int(i % 7 == 0) for i in range(30)]),
        (list(range(20)), [0, 1] * 10),
    ],
)
def test_grouped_split_keeps_patients_together(groups, labels):
    parts = grouped_split(groups, labels, (0.6, 0.2, 0.2), seed=4)
    assert sorted(i for part in parts.values() for i in part) == list(range(len(groups)))
    owners = {}
    for split, members in parts.items():
        for i in members:
            assert owners.setdefault(groups[i], split) == split


def test_grouped_split_bad_lengths():
    with pytest.raises(ValueError, match="one group per label"):
        grouped_split(["a", "b"], [0])


@pytest.mark.parametrize("side", ["left", "right"])
def test_breast_mask_drops_label_keeps_breast(side):
    image = _mammogram(0, side)
    organ = breast_mask(image)
    wall = 3 if side == "left" else SIZE - 4
    assert organ[32, wall] == 1 and organ[6, 54 if side == "left" else 9] == 0 and organ[60, 60 - wall] == 0
    assert organ.dtype == np.uint8


@pytest.mark.parametrize("image,match", [(np.zeros((8, 8)), "constant"), (np.zeros((2, 8, 8)), "2-D")])
def test_breast_mask_bad_input(image, match):
    with pytest.raises(ValueError, match=match):
        breast_mask(image)


# ---------------------------------------------------------------- the real data in ../shared/data


@pytest.mark.slow
@pytest.mark.realdata
def test_real_mini_mias(shared_data, tmp_path):
    datalist = prepare_mini_mias(shared_data / "mini_mias", tmp_path / "mias", size=(64, 64), seed=0)
    _assert_schema(datalist, patient_of=lambda item: (int(Path(item["image"]).stem[3:]) + 1) // 2)
    items = [item for part in _items(datalist).values() for item in part]
    assert len(items) == 263 and sum(item["label"] for item in items) == 56


@pytest.mark.slow
@pytest.mark.realdata
def test_real_shenzhen_montgomery(shared_data, tmp_path):
    datalist = prepare_shenzhen(shared_data / "shenzhen_montgomery", tmp_path / "cxr", size=(64, 64), seed=0)
    _assert_schema(datalist, patient_of=lambda item: Path(item["image"]).stem[:-2])
    items = [item for part in _items(datalist).values() for item in part]
    assert len(items) == 326 and sum(item["label"] for item in items) == 144


def test_a_replaced_folder_goes_only_once_the_new_one_is_in_place(tmp_path, monkeypatch):
    """A failure while deleting the old folder leaves the new one at the output path, never neither."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if ".out.old." in str(path):
            raise OSError("disk error")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(OSError, match="disk error"), staged_folder(out, replaceable=lambda folder: True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
