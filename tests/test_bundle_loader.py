"""``cfattr_monai.bundle.load_network``: a trained network out of the classifier bundle, frozen, or a clear error."""

import shutil

import pytest
import torch
from monai.networks.nets import DenseNet121

from cfattr_monai.bundle import bundle_checkpoint, fingerprint, load_network
from cfattr_monai.networks.mobilenet import MobileNetV1

CLASSIFIER_CONFIGS = "bundles/classifier/configs"


@pytest.fixture
def bundle(tmp_path, repo_root):
    """A copy of the classifier bundle's configs with MobileNetV1 (width 0.5) weights in models/model.pt."""
    shutil.copytree(repo_root / CLASSIFIER_CONFIGS, tmp_path / "configs")
    (tmp_path / "models").mkdir()
    torch.manual_seed(0)
    net = MobileNetV1(width_mult=0.5, dropout_prob=0.2)
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    return tmp_path, net


def test_loads_frozen_network_with_the_saved_weights(bundle):
    bundle_dir, saved = bundle
    net = load_network(bundle_dir)
    assert isinstance(net, MobileNetV1)
    assert not net.training and all(not m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())
    assert fingerprint(net) == fingerprint(saved)
    x = torch.rand(2, 1, 128, 128)
    torch.testing.assert_close(net(x), saved.eval()(x))


def test_task_overlay_selects_the_paper_network(bundle):
    bundle_dir, _ = bundle
    torch.save(DenseNet121(spatial_dims=2, in_channels=1, out_channels=1).state_dict(), bundle_dir / "cxr.pt")
    net = load_network(bundle_dir, overlays=["configs/task_cxr.json"], checkpoint="cxr.pt")
    assert isinstance(net, DenseNet121)


def test_a_bundle_given_by_a_relative_path_has_its_checkpoint_joined_once(bundle, monkeypatch):
    """Callers pass bundle_checkpoint's result on as a checkpoint relative to the bundle (e.g. the acceptance command
    `python -m cfattr_monai.metrics.counterfactual bundles/attributor`): it must name the same file again."""
    bundle_dir, _ = bundle
    monkeypatch.chdir(bundle_dir.parent)
    found = bundle_checkpoint(bundle_dir.name)
    assert found == (bundle_dir / "models" / "model.pt").resolve()
    assert bundle_checkpoint(bundle_dir.name, checkpoint=found) == found


def test_an_overlay_ckpt_dir_is_where_the_weights_are_loaded_from(bundle):
    """A task overlay that trains into another folder (e.g. task_phantom_chest.json → models_chest/) is loaded from
    there, not from the demo's models/model.pt."""
    bundle_dir, demo = bundle
    (bundle_dir / "models_chest").mkdir()
    torch.manual_seed(1)
    chest = MobileNetV1(width_mult=0.5, dropout_prob=0.2)
    torch.save(chest.state_dict(), bundle_dir / "models_chest" / "model.pt")
    overlay = ["configs/task_phantom_chest.json"]
    assert bundle_checkpoint(bundle_dir, overlay) == bundle_dir / "models_chest" / "model.pt"
    assert fingerprint(load_network(bundle_dir, overlays=overlay)) == fingerprint(chest)
    assert fingerprint(load_network(bundle_dir)) == fingerprint(demo)
    assert fingerprint(load_network(bundle_dir, overlays=overlay, checkpoint="models/model.pt")) == fingerprint(demo)
    (bundle_dir / "models_chest" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match="models_chest"):
        load_network(bundle_dir, overlays=overlay)


ERROR_CASES = [
    # (what to break, keyword arguments, expected error, message fragments)
    ("nothing", {"checkpoint": "models/absent.pt"}, FileNotFoundError, ["absent.pt", "train the bundle"]),
    ("nothing", {"overlays": ["configs/task_absent.json"]}, FileNotFoundError, ["task_absent.json"]),
    ("nothing", {"network_key": "no_such_network"}, KeyError, ["no_such_network"]),
    ("wrapped", {}, ValueError, ["model.pt", "expected a state dict"]),
    ("not_a_dict", {}, ValueError, ["model.pt", "list", "expected a state dict"]),
    ("densenet", {}, ValueError, ["model.pt", "missing", "unexpected", "overlays"]),
    ("width", {}, ValueError, ["model.pt", "shape mismatch", "features.conv0.conv.weight"]),
    ("garbage", {}, ValueError, ["model.pt", "weights_only=True"]),
    ("nothing", {"checkpoint": "models"}, ValueError, ["models is a folder", "models/model.pt"]),
]


@pytest.mark.parametrize("breakage,kwargs,error,fragments", ERROR_CASES)
def test_errors_name_the_file_and_the_fix(bundle, breakage, kwargs, error, fragments):
    bundle_dir, net = bundle
    ckpt = bundle_dir / "models" / "model.pt"
    content = {
        "wrapped": {"model": net.state_dict()},
        "not_a_dict": list(net.state_dict().values()),
        "densenet": DenseNet121(spatial_dims=2, in_channels=1, out_channels=1).state_dict(),
        "width": MobileNetV1(width_mult=0.25, dropout_prob=0.2).state_dict(),
    }
    if breakage in content:
        torch.save(content[breakage], ckpt)
    elif breakage == "garbage":
        ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(error) as info:
        load_network(bundle_dir, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_pickled_objects_are_refused_not_executed(bundle, tmp_path):
    """weights_only=True: a checkpoint holding arbitrary Python objects is an error, never unpickled."""
    bundle_dir, _ = bundle
    marker = tmp_path / "executed"
    torch.save({"payload": _Payload(str(marker))}, bundle_dir / "models" / "model.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_network(bundle_dir)
    assert not marker.exists()


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("change", ["value", "name"])
def test_fingerprint_tells_weights_apart(change):
    a, b = MobileNetV1(width_mult=0.25), MobileNetV1(width_mult=0.25)
    b.load_state_dict(a.state_dict())
    assert fingerprint(a) == fingerprint(b)
    if change == "value":
        with torch.no_grad():
            b.class_layers.out.bias += 1e-6
        assert fingerprint(a) != fingerprint(b)
    else:
        assert fingerprint(a) != fingerprint(torch.nn.Sequential(a))
