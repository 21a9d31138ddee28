"""Atomic writes, output names confined to their folder, unique stems, the row-by-row CSV writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cfattr_monai.io.outputs import CsvRowWriter, UniqueStems, atomic_path, output_path, safe_stem


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "out.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and tmp.name.startswith(".")
        tmp.write_bytes(b"complete")
        assert not target.exists()
    assert target.read_bytes() == b"complete"
    assert os.listdir(tmp_path) == ["out.nii.gz"]


def test_atomic_path_leaves_nothing_and_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.png"]


def test_atomic_path_requires_the_writer_to_write(tmp_path):
    with pytest.raises(FileNotFoundError, match="produced no file"):
        with atomic_path(tmp_path / "never.png"):
            pass
    assert os.listdir(tmp_path) == []


SAFE_STEM_CASES = [  # (name from an input, expected stem)
    ("scan_01", "scan_01"),
    ("../../etc/passwd", "etc_passwd"),
    ("/abs/path/img", "abs_path_img"),
    ("C:\\Users\\x\\img", "C_Users_x_img"),
    ("..", "image"),
    ("...", "image"),
    ("", "image"),
    (".hidden", "hidden"),
    ("-rf", "rf"),
    ("a..b", "a_b"),
    ("nul\x00byte", "nul_byte"),
    ("Ärztin röntgen", "rztin_r_ntgen"),
    ("1.2.840.113619.2.55.3.604688119", "1.2.840.113619.2.55.3.604688119"),
    ("x" * 300, "x" * 120),
]


@pytest.mark.parametrize("name, expected", SAFE_STEM_CASES)
def test_safe_stem(name, expected):
    stem = safe_stem(name)
    assert stem == expected
    assert "/" not in stem and "\\" not in stem and ".." not in stem and not stem.startswith(".")


ESCAPE_NAMES = ["../evil", "../../evil", "/etc/evil", "..\\..\\evil", "./../evil", "~/evil", "a/../../evil", ".."]


@pytest.mark.parametrize("name", ESCAPE_NAMES)
@pytest.mark.parametrize("suffix", ["_map.nii.gz", ".csv", "_overlay_sc.dcm"])
def test_output_path_stays_inside(tmp_path, name, suffix):
    out = tmp_path / "out"
    path = output_path(out, name, suffix)
    assert path.parent == out.resolve()
    assert path.name.endswith(suffix) and not path.name.startswith(".")


@pytest.mark.parametrize("suffix", ["/../x.png", "\\x.png", "..", "a/b.png"])
def test_output_path_refuses_a_suffix_with_separators(tmp_path, suffix):
    with pytest.raises(ValueError, match="suffix"):
        output_path(tmp_path, "stem", suffix)


def test_unique_stems_number_collisions_case_insensitively():
    stems = UniqueStems(taken=["scan"])
    assert [stems("scan"), stems("SCAN"), stems("../scan"), stems("other")] == ["scan-2", "SCAN-3", "scan-4", "other"]


def test_csv_row_writer_writes_header_once_and_appends(tmp_path):
    path = tmp_path / "rows.csv"
    with CsvRowWriter(path, ["image", "p"]) as rows:
        rows.write({"image": "a, with comma.png", "p": 0.25})
        assert path.read_text().splitlines()[-1] == '"a, with comma.png",0.25'  # flushed before close
    with CsvRowWriter(path, ["image", "p"]) as rows:
        rows.write({"image": "b.png"})
    assert path.read_text().splitlines() == ["image,p", '"a, with comma.png",0.25', "b.png,"]


@pytest.mark.parametrize(
    "fieldnames, row, match",
    [
        (["image", "q"], None, "exists with columns"),  # an old table with other columns
        (["image", "p"], {"image": "a", "surprise": 1}, "unknown columns"),
    ],
)
def test_csv_row_writer_errors(tmp_path, fieldnames, row, match):
    path = tmp_path / "rows.csv"
    path.write_text("image,p\nold.png,0.5\n")
    with pytest.raises(ValueError, match=match):
        with CsvRowWriter(path, fieldnames) as rows:
            rows.write(row)
    assert path.read_text() == "image,p\nold.png,0.5\n"


def test_output_path_resolves_relative_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert output_path("out", "a", ".png") == Path(tmp_path, "out", "a.png").resolve()
