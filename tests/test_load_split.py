"""Evaluation split loading: masks as the data contract allows them (present, or absent = empty lesion / whole organ)."""

from __future__ import annotations

import json

import pytest

from cfattr_monai.data.phantoms import write_phantom_dataset
from cfattr_monai.metrics.marginalization import load_split


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("split") / "ph", kind="mammo", n=10, size=32, seed=0)


@pytest.mark.parametrize("drop", [(), ("lesion",), ("organ",), ("lesion", "organ")])
def test_absent_masks_follow_the_data_contract(datalist, tmp_path, drop):
    lists = json.loads(datalist.read_text())
    for items in lists.values():
        for item in items:
            item["image"] = str(datalist.parent / item["image"])
            for key in ("lesion", "organ"):
                item[key] = str(datalist.parent / item[key])
            for key in drop:
                item.pop(key)
    trimmed = tmp_path / "datalist.json"
    trimmed.write_text(json.dumps(lists))
    full, data = load_split(datalist, "training"), load_split(trimmed, "training")
    assert data["image"].shape == data["lesion"].shape == data["organ"].shape == full["image"].shape
    assert bool((data["label"] == full["label"]).all())
    for key, absent in (("lesion", 0.0), ("organ", 1.0)):
        expected = (full[key] * 0 + absent) if key in drop else full[key]
        assert bool((data[key] == expected).all()), key
    if "lesion" not in drop:
        assert data["lesion"].sum() > 0  # the phantoms do have lesions


def test_missing_datalist_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_split(tmp_path / "absent.json")
