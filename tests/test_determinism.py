"""With a fixed seed, training a bundle twice on CPU gives identical weights, and inference gives identical outputs.

Each bundle's ``initialize`` calls ``monai.utils.set_determinism(seed=@seed)``; MONAI's ``DataLoader`` then seeds the
random transforms (augmentation, the inpainter's random holes) from it. The runs here use the bundles' real training
transforms (augmentation on), tiny phantoms (16 images of 64²) and two short epochs in tmp folders, then compare:
the trained weights tensor by tensor (``torch.equal``: bit-identical), and the inference outputs of the trained
weights run twice: classifier probabilities (``predictions.csv``), inpainter composites (PNG bytes), attributor soft
and binary maps (NIfTI arrays; the gzip header holds a time stamp, so the arrays are compared, not the bytes).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest
import torch
from test_resume import IMAGE_SIZE, TINY, network_state, run_bundle, tiny_bundles


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    return tiny_bundles(tmp_path_factory.mktemp("bundles"))


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different, f"weights differ between two runs with the same seed: {different[:5]}"


def read_outputs(folder: Path, pattern: str) -> dict[str, object]:
    """Files of ``folder`` matching ``pattern``: NIfTI as arrays (the gzip header has a time stamp), others as bytes."""
    files = sorted(folder.rglob(pattern))
    assert files, f"no {pattern} outputs in {folder}"
    return {
        str(f.relative_to(folder)): nib.load(f).get_fdata().tobytes() if f.name.endswith(".nii.gz") else f.read_bytes()
        for f in files
    }


# bundle → (inference overrides, output pattern)
INFERENCE = {
    "classifier": ({"image_size": IMAGE_SIZE}, "predictions.csv"),
    "inpainter": ({"image_size": IMAGE_SIZE}, "*.png"),
    "attributor": ({"image_size": IMAGE_SIZE}, "*_map*.nii.gz"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["classifier", "inpainter", "attributor"])
def test_training_and_inference_are_deterministic(bundles, tmp_path, name):
    first = run_bundle(bundles, name, tmp_path / "first", **TINY[name])
    second = run_bundle(bundles, name, tmp_path / "second", **TINY[name])
    assert_same_weights(network_state(first), network_state(second))
    saved = [torch.load(tmp_path / run / "models" / "model.pt", weights_only=True) for run in ("first", "second")]
    assert_same_weights(*saved)

    overrides, pattern = INFERENCE[name]
    outputs = []
    for run in ("out1", "out2"):
        run_bundle(bundles, name, tmp_path / "first", config="inference.json",
                   output_dir=str(tmp_path / run), **overrides)  # fmt: skip
        outputs.append(read_outputs(tmp_path / run, pattern))
    assert outputs[0] == outputs[1], f"{name} inference outputs differ between two runs"


@pytest.mark.slow
def test_another_seed_gives_other_weights(bundles, tmp_path):
    """The comparison above can fail: the seed does reach the training."""
    first = run_bundle(bundles, "classifier", tmp_path / "first", **TINY["classifier"])
    other = run_bundle(bundles, "classifier", tmp_path / "other", seed=1, **TINY["classifier"])
    with pytest.raises(AssertionError, match="weights differ"):
        assert_same_weights(network_state(first), network_state(other))
