"""Peak memory of ``cfattr explain`` over 200 vs 2,000 phantom images: it must stay flat (the inputs stream).

Each run is a fresh subprocess; its peak resident set size comes from ``os.wait4`` (``ru_maxrss`` of that child
alone, not the maximum over all children as ``RUSAGE_CHILDREN`` would give). The phantoms are made once with
``cfattr phantoms``; the smaller input is a folder of links to the first images of the same set.

The trained bundles are used when ``--bundles`` holds an attributor with ``models/model.pt``; otherwise the
classifier, inpainter and attributor are instantiated from the repository bundles' ``network_def`` with random
weights (seeded), saved into a scratch bundle tree, and explained with those: memory does not depend on training.

Example::

    python scripts/memory_benchmark.py --work /tmp/cfattr_mem --counts 200 2000 --size 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("classifier", "inpainter", "attributor")


def random_weight_bundles(out_dir: Path, seed: int = 0) -> Path:
    """Copy the three bundles' configs into ``out_dir`` and give them random weights; return the attributor folder."""
    import torch
    from monai.bundle import ConfigParser

    from cfattr_monai.bundle import load_network
    from cfattr_monai.explain.counterfactual import write_classifier_fingerprint

    torch.manual_seed(seed)
    for name in BUNDLES:
        shutil.copytree(REPO / "bundles" / name / "configs", out_dir / name / "configs", dirs_exist_ok=True)
        parser = ConfigParser()
        parser.read_config(str(out_dir / name / "configs" / "inference.json"))
        parser["bundle_root"] = str(out_dir / name)
        if name == "attributor":
            classifier = load_network(out_dir / "classifier")
            parser["classifier"] = classifier
            write_classifier_fingerprint(classifier, out_dir / name / "models")
        network = parser.get_parsed_content("network_def")
        (out_dir / name / "models").mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), out_dir / name / "models" / "model.pt")
    return out_dir / "attributor"


def make_inputs(work: Path, counts: list[int], size: int) -> dict[int, Path]:
    """One phantom set of ``max(counts)`` images; a folder of links to its first ``n`` images for every count."""
    phantoms = work / f"phantoms_{size}"
    if not (phantoms / "datalist.json").is_file():
        n = max(counts)
        cmd = [str(Path(sys.executable).parent / "cfattr"), "phantoms", "--n", str(n), "--size", str(size)]
        subprocess.run([*cmd, "--out", str(phantoms)], check=True)
    images = sorted((phantoms / "images").iterdir())
    if len(images) < max(counts):
        raise ValueError(f"{phantoms} holds {len(images)} images, need {max(counts)}; delete it to regenerate.")
    folders = {}
    for n in counts:
        folder = work / f"inputs_{n}"
        if not folder.is_dir() or len(list(folder.iterdir())) != n:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for image in images[:n]:
                (folder / image.name).symlink_to(image)
        folders[n] = folder
    return folders


def peak_rss_run(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (peak RSS in MiB of that process, wall seconds). Raise when it fails."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({process.returncode}): {process.stderr.read().decode()[-3000:]}")
    return usage.ru_maxrss / 1024, wall  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cfattr_memory_benchmark"), help="scratch folder")
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 2000], help="numbers of images per run")
    parser.add_argument("--size", type=int, default=256, help="phantom side length in pixels")
    parser.add_argument("--bundles", type=Path, default=REPO / "bundles", help="folder of the trained bundles")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (OMP_NUM_THREADS)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    attributor = args.bundles / "attributor"
    weights = "trained"
    if not (attributor / "models" / "model.pt").is_file():
        attributor, weights = random_weight_bundles(args.work / "bundles"), "random"
    folders = make_inputs(args.work, args.counts, args.size)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    results = []
    for n, folder in folders.items():
        out = args.work / f"out_{n}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [str(Path(sys.executable).parent / "cfattr"), "explain", str(folder), "--bundle", str(attributor)]
        cmd += ["--out", str(out), "--batch-size", str(args.batch_size), "--no-progress"]
        rss, wall = peak_rss_run(cmd)
        n_rows = sum(1 for _ in (out / "explanations.csv").open()) - 1
        if n_rows != n:
            raise RuntimeError(f"{out / 'explanations.csv'} lists {n_rows} images, expected {n}")
        results.append({"images": n, "peak_rss_mib": round(rss, 1), "wall_s": round(wall, 1), "weights": weights})
        print(f"{n:>6} images {args.size}²: peak RSS {rss:8.1f} MiB, {wall:7.1f} s ({weights} weights)", flush=True)
        shutil.rmtree(out)
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
