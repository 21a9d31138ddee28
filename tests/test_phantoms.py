import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from cfattr_monai.data.datalist import stratified_split
from cfattr_monai.data.phantoms import (
    Difficulty,
    default_difficulty,
    ensure_phantom_dataset,
    generate_phantom,
    save_phantom_figure,
    write_healthy_twins,
    write_phantom_dataset,
)

KINDS = ["mammo", "chest"]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("index", range(6))
def test_masks_exact(kind, label, index):
    rng = np.random.default_rng([7, index])
    sample = generate_phantom(kind, 96, rng, label=label)
    image, lesion, organ = sample["image"], sample["lesion"], sample["organ"]
    assert image.dtype == np.float32 and image.shape == (96, 96)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert lesion.dtype == organ.dtype == np.uint8
    assert set(np.unique(lesion)) <= {0, 1} and set(np.unique(organ)) <= {0, 1}
    assert sample["label"] == label == int(lesion.any())
    assert not (lesion & (1 - organ)).any(), "lesion outside organ"
    assert 0.1 < organ.mean() < 0.8


@pytest.mark.parametrize("kind", KINDS)
def test_lesion_changes_exactly_its_mask(kind):
    """Same generator state, with and without lesions: the images differ exactly on the lesion mask."""
    healthy = generate_phantom(kind, 128, np.random.default_rng(3), label=0)
    sick = generate_phantom(kind, 128, np.random.default_rng(3), label=1)
    np.testing.assert_array_equal(healthy["organ"], sick["organ"])
    changed = sick["image"] != healthy["image"]
    assert not (changed & (sick["lesion"] == 0)).any()
    assert changed[sick["lesion"] == 1].mean() > 0.9  # the rest lies on a clipped or zero-profile rim


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", ["training", "test"])
def test_healthy_twins_remove_exactly_the_lesions(tmp_path, kind, split):
    """A healthy image's twin is the image; a lesion image's twin differs from it exactly on its lesion."""
    datalist = write_phantom_dataset(tmp_path / "set", kind, n=12, size=48, seed=2, prevalence=0.5)
    twins = write_healthy_twins(datalist, split, tmp_path / "twins")
    items = json.loads(datalist.read_text())[split]
    twin_items = json.loads(twins.read_text())[split]
    assert len(twin_items) == len(items) and {t["label"] for t in twin_items} == {0}
    for item, twin in zip(items, twin_items):
        image = np.asarray(Image.open(datalist.parent / item["image"]))
        lesion = np.asarray(Image.open(datalist.parent / item["lesion"])) > 0
        twin_image = np.asarray(Image.open(twins.parent / twin["image"]))
        assert (twins.parent / twin["organ"]).resolve() == (datalist.parent / item["organ"]).resolve()
        assert not (twin_image != image)[~lesion].any()
        if item["label"] == 0:
            assert not lesion.any()
        else:
            assert (twin_image != image)[lesion].mean() > 0.5


@pytest.mark.parametrize(
    "prepare,match",
    [
        (lambda root: (root / "phantoms.json").unlink(), "phantoms.json not found"),
        (lambda root: (root / "datalist.json").write_text(json.dumps({"test": [
            {"image": "images/scan_1.png", "label": 0, "organ": "organs/scan_1.png"}]})), "expected a phantom named"),
        (lambda root: (root / "datalist.json").write_text(json.dumps({"training": [], "test": []})),
         r"no images in split 'test' \(splits: \['test', 'training'\]\)"),
        (lambda root: None, r"no images in split 'testing'"),
    ],
    ids=["not-a-phantom-set", "foreign-file-name", "empty-split", "unknown-split"],
)
def test_healthy_twins_bad_input(tmp_path, prepare, match):
    datalist = write_phantom_dataset(tmp_path / "set", n=10, size=32)
    prepare(datalist.parent)
    split = "testing" if "testing" in match else "test"
    with pytest.raises(ValueError, match=match):
        write_healthy_twins(datalist, split, tmp_path / "twins")


def test_lesion_radius_follows_difficulty():
    sizes = {}
    for name, radius in {"small": (0.03, 0.03), "large": (0.12, 0.12)}.items():
        areas = [generate_phantom("mammo", 128, np.random.default_rng(i), label=1, radius=radius, max_lesions=1,
                                  spiculated=0.0)["lesion"].sum() for i in range(5)]
        sizes[name] = np.median(areas)
    assert sizes["large"] > 8 * sizes["small"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"contrast": (0.2, 0.1)}, "contrast"),
        ({"radius": (0.0, 0.1)}, "radius"),
        ({"max_lesions": 0}, "max_lesions"),
        ({"prevalence": 1.5}, "prevalence"),
        ({"texture": -1.0}, "texture"),
        ({"sharpness": 1.0}, "unknown difficulty"),
    ],
)
def test_bad_difficulty(overrides, match):
    with pytest.raises(ValueError, match=match):
        default_difficulty("mammo", **overrides)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: generate_phantom("brain", 64, np.random.default_rng(0)), "kind"),
        (lambda: generate_phantom("mammo", 16, np.random.default_rng(0)), "at least 32"),
        (lambda: generate_phantom("chest", 64, np.random.default_rng(0), label=2), "label"),
        (lambda: stratified_split([0, 1], (0.5, 0.5, 0.5)), "splits"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_difficulty_defaults_differ_per_kind():
    assert isinstance(default_difficulty("chest"), Difficulty)
    assert default_difficulty("mammo") != default_difficulty("chest")
    assert default_difficulty("mammo", contrast=None) == default_difficulty("mammo")


@pytest.mark.parametrize("labels", [[0, 1] * 20, [0] * 30 + [1] * 10, [1] * 7 + [0] * 13])
def test_stratified_split(labels):
    parts = stratified_split(labels, (0.6, 0.2, 0.2), seed=1)
    flat = [i for part in parts.values() for i in part]
    assert sorted(flat) == list(range(len(labels)))
    labels = np.asarray(labels)
    for name, fraction in zip(("training", "validation", "test"), (0.6, 0.2, 0.2)):
        for value in (0, 1):  # each class is split by the fractions on its own
            assert abs((labels[parts[name]] == value).sum() - fraction * (labels == value).sum()) <= 1
    assert parts == stratified_split(labels.tolist(), (0.6, 0.2, 0.2), seed=1)
    assert parts != stratified_split(labels.tolist(), (0.6, 0.2, 0.2), seed=2)


@pytest.mark.parametrize("kind", KINDS)
def test_write_schema_and_splits(tmp_path, kind):
    datalist = write_phantom_dataset(tmp_path / "set", kind, n=20, size=48, seed=0)
    assert datalist == tmp_path / "set" / "datalist.json"
    content = json.loads(datalist.read_text())
    assert set(content) == {"training", "validation", "test"}
    assert [len(content[k]) for k in ("training", "validation", "test")] == [12, 4, 4]
    images = [item["image"] for part in content.values() for item in part]
    assert len(set(images)) == 20
    assert sum(item["label"] for part in content.values() for item in part) == 10
    for part in content.values():
        assert {item["label"] for item in part} == {0, 1}
        for item in part:
            assert set(item) == {"image", "label", "lesion", "organ"}
            lesion = np.asarray(Image.open(datalist.parent / item["lesion"]))
            assert set(np.unique(lesion)) <= {0, 255} and item["label"] == int(lesion.any())
            assert Image.open(datalist.parent / item["image"]).mode == "L"
    loaded = load_decathlon_datalist(str(datalist), data_list_key="test", base_dir=str(datalist.parent))
    assert Path(loaded[0]["image"]).is_file() and Path(loaded[0]["organ"]).is_file()
    recorded = json.loads((datalist.parent / "phantoms.json").read_text())
    assert recorded["kind"] == kind and recorded["n"] == 20 and recorded["difficulty"]["contrast"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_bytes(tmp_path, kind):
    first = _digest(write_phantom_dataset(tmp_path / "a", kind, n=12, size=64, seed=5).parent)
    second = _digest(write_phantom_dataset(tmp_path / "b", kind, n=12, size=64, seed=5).parent)
    other = _digest(write_phantom_dataset(tmp_path / "c", kind, n=12, size=64, seed=6).parent)
    assert first == second
    images = [name for name in first if name.startswith("images/")]
    assert all(first[name] != other[name] for name in images)


def test_prevalence(tmp_path):
    content = json.loads(write_phantom_dataset(tmp_path / "p", n=20, size=48, prevalence=0.25).read_text())
    assert sum(item["label"] for part in content.values() for item in part) == 5


def test_write_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not empty"):
        write_phantom_dataset(tmp_path, n=10, size=48)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_rewrite_replaces_older_set(tmp_path):
    write_phantom_dataset(tmp_path / "set", n=12, size=48, seed=0)
    write_phantom_dataset(tmp_path / "set", n=10, size=48, seed=1)
    assert json.loads((tmp_path / "set" / "phantoms.json").read_text())["seed"] == 1
    assert len(list((tmp_path / "set" / "images").iterdir())) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    import cfattr_monai.data.phantoms as phantoms

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(phantoms, "stratified_split", lambda *a, **k: explode() if len(a[0]) > 2 else None)
    with pytest.raises(KeyboardInterrupt):
        write_phantom_dataset(tmp_path / "set", n=10, size=48)
    assert list(tmp_path.iterdir()) == []


def test_ensure_writes_once(tmp_path):
    datalist = tmp_path / "demo" / "datalist.json"
    assert ensure_phantom_dataset(datalist, "mammo", n=10, size=48, seed=0) == datalist
    stamp = datalist.stat().st_mtime_ns
    assert ensure_phantom_dataset(datalist, "mammo", n=10, size=48, seed=0) == datalist
    assert datalist.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "folder,written_before,warned",
    [
        ("typo/demo", False, True),  # a mistyped --dataset_dir: generated anyway, with a warning
        (".", False, False),  # an existing (empty) folder chosen for the phantoms
        (".", True, False),  # the data set is already there: nothing generated
    ],
)
def test_ensure_warns_when_generating_into_a_new_folder(tmp_path, caplog, capsys, folder, written_before, warned):
    datalist = tmp_path / folder / "datalist.json"
    if written_before:
        ensure_phantom_dataset(datalist, "mammo", n=10, size=48, seed=0)
    with caplog.at_level(logging.WARNING, logger="cfattr_monai.data.phantoms"):
        assert ensure_phantom_dataset(datalist, "mammo", n=10, size=48, seed=0) == datalist
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == warned
    if warned:
        assert caplog.records[0].name == "cfattr_monai.data.phantoms"
        assert f"{datalist.parent} does not exist" in messages[0]
        assert "writing 10 generated mammo phantoms" in messages[0] and "pass --phantoms False" in messages[0]
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("list.json", {}, "datalist.json"),
        ("datalist.json", {"seed": 1}, "other generation parameters"),
        ("datalist.json", {"contrast": (0.3, 0.4)}, "other generation parameters"),
        ("datalist.json", {"splits": (0.8, 0.1, 0.1)}, "'splits'"),
    ],
)
def test_ensure_refuses_mismatch(tmp_path, name, kwargs, match):
    ensure_phantom_dataset(tmp_path / "datalist.json", "mammo", n=10, size=48, seed=0)
    with pytest.raises(ValueError, match=match):
        ensure_phantom_dataset(tmp_path / name, "mammo", n=10, size=48, **{"seed": 0, **kwargs})


@pytest.mark.parametrize("kind", KINDS)
def test_figure(tmp_path, kind):
    path = save_phantom_figure(tmp_path / f"{kind}.png", kind, count=2, size=64)
    assert Image.open(path).size[0] > 100 and path.stat().st_size < 300_000


def test_ensure_writes_the_asked_splits_and_reuses_them(tmp_path):
    asked = {"n": 20, "size": 48, "seed": 0, "splits": (0.9, 0.05, 0.05), "prevalence": 0.0}
    datalist = ensure_phantom_dataset(tmp_path / "datalist.json", "chest", **asked)
    lists = json.loads(datalist.read_text())
    assert {key: len(items) for key, items in lists.items()} == {"training": 18, "validation": 1, "test": 1}
    assert all(item["label"] == 0 for items in lists.values() for item in items)
    assert ensure_phantom_dataset(datalist, "chest", **asked) == datalist


def test_ensure_refuses_set_from_older_generator(tmp_path):
    datalist = ensure_phantom_dataset(tmp_path / "datalist.json", "mammo", n=10, size=48, seed=0)
    recorded = json.loads((tmp_path / "phantoms.json").read_text())
    (tmp_path / "phantoms.json").write_text(json.dumps({**recorded, "generator": recorded["generator"] - 1}))
    with pytest.raises(ValueError, match="delete"):
        ensure_phantom_dataset(datalist, "mammo", n=10, size=48, seed=0)


@pytest.mark.parametrize("kind", ["mammo", "chest"])
@pytest.mark.parametrize("label", [0, 1])
def test_every_image_spans_the_same_range_so_min_max_scaling_carries_no_label(kind, label):
    for index in range(8):
        image = generate_phantom(kind, 96, np.random.default_rng([5, index]), label=label)["image"]
        assert image.max() == 1.0


def test_film_label_needs_a_background_corner():
    from cfattr_monai.data.phantoms import add_film_label

    with pytest.raises(ValueError, match="no background corner"):
        add_film_label(np.zeros((64, 64)), np.ones((64, 64), dtype=bool))
