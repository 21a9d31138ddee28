"""Export: ``monai.bundle ckpt_export`` to TorchScript (classifier, attributor) and ONNX (attributor).

The exported model must give the eager network's logits / maps to 1e-5. The classifier is scripted; the attributor
is traced (``use_trace``): its error messages format ``tuple(tensor.shape)`` and ``map_into_compact`` computes the
kernel radius and pooling stride in Python from the image size, neither of which ``torch.jit.script`` compiles, so
the traced module is valid for the input size it was traced at (the bundle's ``image_size``), any batch size.
Weights are random (seeded): equivalence does not depend on training.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from monai.bundle import ckpt_export

from cfattr_monai.networks.attribution import AttentionGatedUNet
from cfattr_monai.networks.mobilenet import MobileNetV1
from cfattr_monai.transforms.masks import SmoothMaxCompact

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # traced and tested spatial size (the attributor's image_size is overridden to match)
TOL = 1e-5


def _attributor_config() -> dict:
    return json.loads((REPO / "bundles" / "attributor" / "configs" / "inference.json").read_text())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """A classifier bundle copy with random weights and a random attributor checkpoint on top of it."""
    root = tmp_path_factory.mktemp("export")
    classifier_dir = root / "classifier"
    shutil.copytree(REPO / "bundles" / "classifier" / "configs", classifier_dir / "configs")
    (classifier_dir / "models").mkdir()
    torch.manual_seed(0)
    width = json.loads((classifier_dir / "configs" / "inference.json").read_text())["width_mult"]
    classifier = MobileNetV1(width_mult=width, dropout_prob=0.2).eval()
    torch.save(classifier.state_dict(), classifier_dir / "models" / "model.pt")
    config = _attributor_config()
    compact = SmoothMaxCompact(sigma_fraction=config["sigma_fraction"], smoothing=config["smoothing"])
    attributor = AttentionGatedUNet(classifier, compact=compact, init_std=config["init_std"]).eval()
    torch.save(attributor.state_dict(), root / "attributor.pt")
    return {"root": root, "classifier": classifier_dir, "attributor_ckpt": root / "attributor.pt"}


def _export(bundle: str, filepath: Path, ckpt_file: Path, **kwargs) -> torch.jit.ScriptModule:
    configs = REPO / "bundles" / bundle / "configs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings for the shape-dependent Python arithmetic
        ckpt_export(
            net_id="network_def",
            filepath=str(filepath),
            ckpt_file=str(ckpt_file),
            config_file=str(configs / "inference.json"),
            meta_file=str(configs / "metadata.json"),
            bundle_root=str(REPO / "bundles" / bundle),
            **kwargs,
        )
    assert filepath.is_file(), f"ckpt_export wrote no {filepath}"
    return torch.jit.load(str(filepath), map_location="cpu").eval()


def _eager(bundle: str, ckpt_file: Path, **overrides) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
    for key, value in overrides.items():
        parser[key] = value
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(ckpt_file, map_location="cpu", weights_only=True))
    return network.eval()


@pytest.fixture(scope="module")
def classifier_pair(bundles):
    ckpt = bundles["classifier"] / "models" / "model.pt"
    return _export("classifier", bundles["root"] / "classifier.ts", ckpt), _eager("classifier", ckpt)


@pytest.mark.parametrize("batch", [1, 3])
def test_classifier_torchscript_matches_eager(classifier_pair, batch):
    exported, eager = classifier_pair
    image = torch.rand(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected, got = eager(image), exported(image)
    assert got.shape == (batch, 1)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def attributor_pair(bundles):
    overrides = {"classifier_bundle": str(bundles["classifier"]), "device": "$torch.device('cpu')"}
    exported = _export(
        "attributor",
        bundles["root"] / "attributor.ts",
        bundles["attributor_ckpt"],
        use_trace=True,
        input_shape=[2, 1, SIZE, SIZE],
        **overrides,
    )
    return exported, _eager("attributor", bundles["attributor_ckpt"], **overrides)


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_attributor_torchscript_matches_eager(attributor_pair, batch):
    exported, eager = attributor_pair
    image = torch.rand(batch, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected, got = eager(image), exported(image)
    assert got.shape == (batch, 1, SIZE, SIZE)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


def test_attributor_torchscript_holds_the_frozen_encoder(attributor_pair):
    exported, eager = attributor_pair
    exported_params = dict(exported.named_parameters())
    classifier_params = {n: p for n, p in eager.named_parameters() if n.startswith("classifier.")}
    assert classifier_params, "the eager attributor has no classifier submodule"
    for name, param in classifier_params.items():
        assert name in exported_params, f"frozen encoder weight {name} missing from the export"
        torch.testing.assert_close(exported_params[name], param, atol=0, rtol=0)


def test_attributor_export_without_classifier_weights_names_the_file(tmp_path, bundles):
    empty = tmp_path / "classifier"
    shutil.copytree(REPO / "bundles" / "classifier" / "configs", empty / "configs")
    with pytest.raises(RuntimeError) as raised:  # monai.bundle wraps the error of a failing config expression
        _export(
            "attributor",
            tmp_path / "attributor.ts",
            bundles["attributor_ckpt"],
            use_trace=True,
            input_shape=[1, 1, SIZE, SIZE],
            classifier_bundle=str(empty),
        )
    cause = raised.value.__cause__
    assert isinstance(cause, FileNotFoundError), f"expected a FileNotFoundError as cause, got {cause!r}"
    assert str(empty / "models" / "model.pt") in str(cause)
    assert not (tmp_path / "attributor.ts").exists()


@pytest.mark.parametrize("dynamo", [False])
def test_attributor_onnx_runtime_matches_eager(attributor_pair, tmp_path, dynamo):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    _, eager = attributor_pair
    path = tmp_path / "attributor.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            eager,
            (torch.rand(2, 1, SIZE, SIZE),),
            str(path),
            input_names=["image"],
            output_names=["map"],
            dynamic_axes={"image": {0: "batch"}, "map": {0: "batch"}},
            dynamo=dynamo,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = torch.rand(3, 1, SIZE, SIZE)
    (got,) = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), eager(image), atol=TOL, rtol=0)
