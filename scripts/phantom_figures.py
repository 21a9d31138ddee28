"""Draw the phantom figures of the docs: four lesion phantoms of each kind, below them the lesion and organ outlines.

    python scripts/phantom_figures.py --out docs/figures          # phantom_mammo.png, phantom_chest.png

Image ``i`` is drawn as ``write_phantom_dataset`` draws it (``np.random.default_rng([seed, i])``), with a lesion.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cfattr_monai.data.phantoms import KINDS, generate_phantom  # noqa: E402


def phantom_figure(kind: str, path: Path, size: int = 256, seed: int = 0, count: int = 4) -> Path:
    """Save a 2 × ``count`` grid: the phantoms, then the same with the lesion (red) and organ (green) outlines."""
    phantoms = [generate_phantom(kind, size, np.random.default_rng([seed, i]), label=1) for i in range(count)]
    figure, axes = plt.subplots(2, count, figsize=(1.8 * count, 3.8))
    for column, phantom in enumerate(phantoms):
        for row in (0, 1):
            axes[row, column].imshow(phantom["image"], cmap="gray", vmin=0, vmax=1)
            axes[row, column].axis("off")
        axes[1, column].contour(phantom["lesion"], levels=[0.5], colors="red", linewidths=0.8)
        axes[1, column].contour(phantom["organ"], levels=[0.5], colors="lime", linewidths=0.8)
    figure.suptitle(f"{kind} phantoms ({size}², seed {seed}); below: lesion (red), organ (green)", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/figures"), help="folder of the PNG files")
    parser.add_argument("--seed", type=int, default=0, help="data-set seed")
    args = parser.parse_args(argv)
    for kind in KINDS:
        print(phantom_figure(kind, args.out / f"phantom_{kind}.png", seed=args.seed))


if __name__ == "__main__":
    main()
