"""Clinical I/O: images in (PNG, DICOM, NIfTI), DICOM Secondary Captures out, atomic and confined output files."""

from cfattr_monai.io.dicom import DicomInputError, RadiographDicomReader, read_header, write_secondary_capture
from cfattr_monai.io.images import ImageInputError, iter_image_files, load_image
from cfattr_monai.io.outputs import CsvRowWriter, UniqueStems, atomic_path, output_path, safe_stem

__all__ = [
    "DicomInputError",
    "ImageInputError",
    "RadiographDicomReader",
    "CsvRowWriter",
    "UniqueStems",
    "atomic_path",
    "iter_image_files",
    "load_image",
    "output_path",
    "read_header",
    "safe_stem",
    "write_secondary_capture",
]
