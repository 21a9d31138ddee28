"""MONAI Deploy application: counterfactual attribution maps of a DICOM radiograph study as DICOM Secondary Captures.

Pipeline (monai-deploy-app-sdk operators, then ours)::

    DICOMDataLoaderOperator ──dicom_study_list──▶ DICOMSeriesSelectorOperator (Modality MG/CR/DX)
        ──study_selected_series_list──▶ CounterfactualAttributionOperator ──▶ <output>/<stem>_overlay_sc.dcm,
                                                                               <stem>_mask_sc.dcm, maps, CSV

The attribution operator explains every instance of the selected series with the trained attributor bundle
(classifier and inpainter bundles loaded beside it, classifier fingerprint checked) through
:func:`cfattr_monai.io.explanations.explain_images`, which writes the overlay (RGB) and the binary map (grey) as
Secondary Captures filed into the source study, plus NIfTI maps, PNGs and ``explanations.csv``.

Run (see deploy/README.md)::

    CFATTR_BUNDLE=bundles/attributor python deploy/app.py -i <dicom study folder> -o <output folder>

Settings come from the environment (:func:`operator_settings`): ``CFATTR_BUNDLE`` (the attributor bundle folder),
``CFATTR_OVERLAYS`` (its task overlays, comma-separated, e.g. ``configs/task_mammo.json``: the weights are then read
from that task's ``models_mammo/``), ``CFATTR_DEVICE`` (default ``cpu``) and ``CFATTR_BATCH_SIZE`` (default 8).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Fragment, Operator, OperatorSpec
from monai.deploy.operators import DICOMDataLoaderOperator, DICOMSeriesSelectorOperator

from cfattr_monai.explain.counterfactual import load_explainer
from cfattr_monai.io.explanations import bundle_image_size, explain_images

BUNDLE_ENV, OVERLAYS_ENV = "CFATTR_BUNDLE", "CFATTR_OVERLAYS"
DEVICE_ENV, BATCH_SIZE_ENV = "CFATTR_DEVICE", "CFATTR_BATCH_SIZE"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "attributor"
RADIOGRAPH_RULES = json.dumps(
    {"selections": [{"name": "radiograph", "conditions": {"Modality": "(?i)^(MG|CR|DX)$"}}]}
)  # projection radiographs: mammography, computed and digital radiography


def operator_settings(environ: Mapping[str, str]) -> dict:
    """The attribution operator's ``bundle``, ``overlays``, ``device`` and ``batch_size`` from the environment.

    Raises:
        ValueError: ``CFATTR_BATCH_SIZE`` is not a positive integer.
    """
    batch_size = environ.get(BATCH_SIZE_ENV, "8").strip()
    if not batch_size.isdigit() or int(batch_size) < 1:
        raise ValueError(f"{BATCH_SIZE_ENV}={batch_size!r}: expected a positive integer (images per forward pass).")
    overlays = tuple(o.strip() for o in environ.get(OVERLAYS_ENV, "").split(",") if o.strip())
    return {
        "bundle": environ.get(BUNDLE_ENV, DEFAULT_BUNDLE),
        "overlays": overlays,
        "device": environ.get(DEVICE_ENV, "cpu"),
        "batch_size": int(batch_size),
    }


class CounterfactualAttributionOperator(Operator):
    """Explain the images of the selected DICOM series with the attributor bundle; write DICOM and file outputs.

    Args:
        fragment: the application.
        bundle: attributor bundle folder (trained; classifier and inpainter bundles as it names).
        output_folder: where the outputs go (created).
        overlays: task overlays of the attributor bundle, e.g. ``["configs/task_mammo.json"]``.
        batch_size: images per forward pass.
        device: torch device.

    Example:
        >>> CounterfactualAttributionOperator(app, bundle="bundles/attributor", output_folder="out")  # doctest: +SKIP
    """

    INPUT = "study_selected_series_list"

    def __init__(
        self,
        fragment: Fragment,
        *args,
        bundle: str | os.PathLike,
        output_folder: str | os.PathLike,
        overlays: tuple[str, ...] = (),
        batch_size: int = 8,
        device: str = "cpu",
        **kwargs,
    ) -> None:
        self.bundle, self.output_folder = Path(bundle), Path(output_folder)
        if not (self.bundle / "configs" / "inference.json").is_file():
            raise FileNotFoundError(
                f"CounterfactualAttributionOperator: {self.bundle} is not an attributor bundle (no "
                f"configs/inference.json); set {BUNDLE_ENV} to the trained bundles/attributor folder."
            )
        self.overlays, self.batch_size, self.device = tuple(overlays), batch_size, device
        self.explainer = load_explainer(self.bundle, self.overlays, device=device)
        self.image_size = bundle_image_size(self.bundle, self.overlays)
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.INPUT)

    def compute(self, op_input, op_output, context) -> None:
        selections = op_input.receive(self.INPUT) or []
        files = [
            Path(instance.get_native_sop_instance().filename)
            for study in selections
            for selected in study.selected_series
            for instance in selected.series.get_sop_instances()
        ]
        if not files:
            raise ValueError(
                "CounterfactualAttributionOperator: no MG/CR/DX series in the input study; give a folder of "
                "projection radiograph DICOM files (-i)."
            )
        summary = explain_images(
            self.explainer, files, self.output_folder, self.image_size,
            batch_size=self.batch_size, device=self.device, progress=False, overwrite=True,
        )  # fmt: skip  (each run of the app writes its own table, as before)
        self.logger.info("explained %d DICOM image(s) into %s", summary["explained"], self.output_folder)


class CounterfactualAttributionApp(Application):
    """DICOM study in, counterfactual attribution Secondary Captures out (module docstring)."""

    name = "cfattr-counterfactual-attribution"
    description = "Counterfactual attribution maps (Lenis et al., MICCAI 2020) of MG/CR/DX DICOM radiographs"
    version = "0.1.0"

    def compose(self) -> None:
        context = Application.init_app_context(self.argv)
        loader = DICOMDataLoaderOperator(
            self, CountCondition(self, 1), input_folder=Path(context.input_path), name="dicom_loader"
        )
        selector = DICOMSeriesSelectorOperator(self, rules=RADIOGRAPH_RULES, all_matched=True, name="selector")
        attribution = CounterfactualAttributionOperator(
            self, output_folder=Path(context.output_path), name="attribution", **operator_settings(os.environ)
        )
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, attribution, {("study_selected_series_list", CounterfactualAttributionOperator.INPUT)})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    CounterfactualAttributionApp().run()
