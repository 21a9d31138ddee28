"""Outputs that are either complete or absent, under names that stay inside their output folder.

Unattended pipelines are killed, run out of disk and meet hostile file names. Two rules keep an output folder
trustworthy:

* every file is written under a hidden temporary name in its final folder and renamed with :func:`os.replace`
  (atomic on POSIX and Windows within one file system), so a reader never sees half a file;
* every name derived from an input (a file name, a DICOM SOP Instance UID, a Patient ID in a header) goes through
  :func:`safe_stem` and :func:`output_path`, so ``../``, absolute paths, drive letters, NUL bytes or a name made only
  of dots can neither leave the folder nor overwrite a hidden file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["atomic_path", "save_figure", "safe_stem", "output_path", "UniqueStems", "CsvRowWriter"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM_LENGTH = 120


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only when the block succeeds.

    The temporary name keeps the full suffix (``.nii.gz``, ``.dcm``) so writers that choose their format from the
    suffix still work. On any exception the temporary file is removed and the exception propagates; an existing
    ``path`` is then left untouched.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_path(folder / "a.txt") as tmp:
        ...     _ = tmp.write_text("done")
        >>> sorted(p.name for p in folder.iterdir())
        ['a.txt']
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer for {path} produced no file at its temporary name {tmp}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG through :func:`atomic_path`, close it, and return ``path``."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def safe_stem(name: str, fallback: str = "image") -> str:
    """A file-name stem made of ``[A-Za-z0-9._-]`` only, without leading dots or dashes, at most 120 characters.

    Path separators, ``..`` and every other character are replaced by ``_``; the result never names a parent folder,
    an absolute path or a hidden file. An empty result becomes ``fallback``.

    Example:
        >>> safe_stem("../../etc/passwd"), safe_stem("C:\\\\scan 1.dcm"), safe_stem("1.2.840.10008.99")
        ('etc_passwd', 'C_scan_1.dcm', '1.2.840.10008.99')
    """
    stem = _UNSAFE.sub("_", str(name))
    stem = re.sub(r"\.{2,}", "_", stem)
    stem = re.sub(r"_+", "_", stem).strip("._-")
    return stem[:MAX_STEM_LENGTH].rstrip("._-") or fallback


def output_path(out_dir: str | os.PathLike, stem: str, suffix: str) -> Path:
    """``out_dir / (safe_stem(stem) + suffix)``, checked to lie directly inside ``out_dir``.

    Raises:
        ValueError: the suffix contains a path separator (a programming error; stems are always sanitized).
    """
    if "/" in suffix or "\\" in suffix or suffix in {".", ".."}:
        raise ValueError(f"output suffix must be a plain file-name ending such as '_map.nii.gz', got {suffix!r}.")
    folder = Path(out_dir).resolve()
    path = (folder / f"{safe_stem(stem)}{suffix}").resolve()
    if path.parent != folder:
        raise ValueError(f"output name {stem!r}{suffix!r} would leave the output folder {folder}; got {path}.")
    return path


class UniqueStems:
    """Hands out sanitized stems, appending ``-2``, ``-3`` … when two inputs share a name.

    Only the stems are remembered (strings), never the images, so it is safe for streams of any length.

    Example:
        >>> stems = UniqueStems()
        >>> stems("a/scan.png"), stems("b/scan.png"), stems("../scan.png")
        ('a_scan.png', 'b_scan.png', 'scan.png')
        >>> stems("scan"), stems("scan")
        ('scan', 'scan-2')
    """

    def __init__(self, taken: Sequence[str] = ()) -> None:
        self._taken = {s.lower() for s in taken}

    def __call__(self, name: str) -> str:
        stem = candidate = safe_stem(name)
        n = 1
        while candidate.lower() in self._taken:  # case-insensitive: outputs may land on a case-folding file system
            n += 1
            candidate = f"{stem}-{n}"
        self._taken.add(candidate.lower())
        return candidate


class CsvRowWriter:
    """Append rows to a CSV file, one complete line per ``write`` call, flushed and synced to disk.

    A crash can therefore only lose the row being written, never leave a truncated line that a later reader would
    misparse. The header is written when the file is new or empty; an existing file must have the same header.

    Args:
        path: the CSV file.
        fieldnames: the columns, in order.

    Raises:
        ValueError: ``path`` exists with other columns (pick another output folder or delete the file).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "rows.csv"
        >>> with CsvRowWriter(path, ["image", "p"]) as rows:
        ...     rows.write({"image": "a.png", "p": 0.5})
        >>> path.read_text().splitlines()
        ['image,p', 'a.png,0.5']
    """

    def __init__(self, path: str | os.PathLike, fieldnames: Sequence[str]) -> None:
        self.path = Path(path)
        self.fieldnames = list(fieldnames)
        if self.path.is_file() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                header = next(csv.reader(f), [])
            if header != self.fieldnames:
                raise ValueError(
                    f"{self.path} exists with columns {header}, expected {self.fieldnames}; "
                    "write to a new --out folder or remove the old file."
                )
            self._file = self.path.open("a", newline="")
        else:
            self._file = self.path.open("w", newline="")
            self._write_line(self.fieldnames)

    def _write_line(self, values: Sequence) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerow(values)
        self._file.write(buffer.getvalue())
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, row: Mapping) -> None:
        """Append one row (missing keys are written empty; unknown keys raise ``ValueError``)."""
        unknown = set(row) - set(self.fieldnames)
        if unknown:
            raise ValueError(f"CSV row has unknown columns {sorted(unknown)}; expected a subset of {self.fieldnames}.")
        self._write_line([row.get(k, "") for k in self.fieldnames])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CsvRowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
