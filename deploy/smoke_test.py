"""End-to-end check of deploy/app.py with the MONAI Deploy SDK: a 3-image MG study in, Secondary Captures out.

Needs an environment with monai-deploy-app-sdk (deploy/README.md); weights are random (seeded) unless
``--bundle`` names a trained attributor bundle. Exit status 0 when every image got its overlay and mask Secondary
Capture, filed into the source study. Run::

    /tmp/mdvenv/bin/python deploy/smoke_test.py --work /tmp/cfattr_deploy
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
DIGITAL_MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"
MARKER = ".cfattr_deploy_smoke_test"  # written into --work: only such a folder is emptied by a later run


def fresh_work_folder(work: Path) -> Path:
    """Empty ``work`` for a new run; a non-empty folder this script did not make is refused, never deleted."""
    if work.is_dir() and any(work.iterdir()) and not (work / MARKER).is_file():
        raise SystemExit(f"--work {work} is not empty and was not made by this script; pass a new or empty folder.")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / MARKER).touch()
    return work


def write_study(folder: Path, n: int = 3, size: int = 128) -> list[Dataset]:
    """``n`` 12-bit MG phantom images of one study and series, as DICOM files in ``folder``."""
    from cfattr_monai.data.phantoms import generate_phantom

    folder.mkdir(parents=True, exist_ok=True)
    study, series, rng = generate_uid(), generate_uid(), np.random.default_rng(0)
    written = []
    for i in range(n):
        image = generate_phantom("mammo", size, rng)["image"]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = DIGITAL_MAMMOGRAPHY, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, generate_uid()
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = "Phantom^One", "PH-1", "20260101", "120000"
        ds.AccessionNumber, ds.StudyID, ds.Modality, ds.InstanceNumber = "A1", "S1", "MG", i + 1
        ds.SeriesNumber, ds.SeriesDescription, ds.StudyDescription = 1, "phantom", "phantom study"
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", size, size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (image * 4095).round().astype(np.uint16).tobytes()
        ds.save_as(folder / f"img{i}.dcm", enforce_file_format=True)
        written.append(ds)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cfattr_deploy"))
    parser.add_argument("--bundle", type=Path, help="trained attributor bundle (default: random weights)")
    args = parser.parse_args(argv)
    fresh_work_folder(args.work)
    if args.bundle is None:
        spec = importlib.util.spec_from_file_location("memory_benchmark", REPO / "scripts" / "memory_benchmark.py")
        benchmark = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(benchmark)
        args.bundle = benchmark.random_weight_bundles(args.work / "bundles")
    sources = write_study(args.work / "study")
    os.environ["CFATTR_BUNDLE"] = str(args.bundle)
    sys.path.insert(0, str(REPO / "deploy"))
    from app import CounterfactualAttributionApp

    out = args.work / "output"
    argv = [sys.executable, str(REPO / "deploy" / "app.py"), "-i", str(args.work / "study"), "-o", str(out)]
    CounterfactualAttributionApp(argv).run()  # like sys.argv after the interpreter, which holoscan drops

    failures = []
    for kind in ("overlay", "mask"):
        written = sorted(out.glob(f"*_{kind}_sc.dcm"))
        if len(written) != len(sources):
            failures.append(f"{len(written)} {kind} Secondary Captures for {len(sources)} images")
        for path in written:
            ds = pydicom.dcmread(path)
            if ds.StudyInstanceUID != sources[0].StudyInstanceUID or ds.Modality != "OT":
                failures.append(f"{path.name}: study {ds.StudyInstanceUID}, modality {ds.Modality}")
    print("\n".join(failures) or f"OK: {len(sources)} images → {sorted(p.name for p in out.glob('*.dcm'))}")
    return int(bool(failures))


if __name__ == "__main__":
    sys.exit(main())
