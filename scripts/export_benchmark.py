"""CPU throughput of the attributor network: eager PyTorch vs TorchScript (traced) vs ONNX Runtime.

The network is the attributor bundle's ``network_def`` (AttentionGatedUNet with its frozen classifier encoder and
the compact mapping) on the classifier bundle's ``network_def``, random weights (throughput does not depend on
training). Each backend runs ``--batches`` timed forward passes after two warm-up passes, on the same inputs.

Example::

    python scripts/export_benchmark.py --batch-size 8 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]


def attributor() -> torch.nn.Module:
    """The attributor bundle's network with a random classifier of the classifier bundle's configuration."""
    parsers = {}
    for name in ("classifier", "attributor"):
        parsers[name] = ConfigParser()
        parsers[name].read_config(str(REPO / "bundles" / name / "configs" / "inference.json"))
    parsers["attributor"]["classifier"] = parsers["classifier"].get_parsed_content("network_def").eval()
    return parsers["attributor"].get_parsed_content("network_def").eval()


def images_per_second(run, batch: torch.Tensor, batches: int) -> float:
    for _ in range(2):
        run(batch)
    start = time.perf_counter()
    for _ in range(batches):
        run(batch)
    return batches * batch.shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image side of the timed batch (default: the demo's 128)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=10, help="timed forward passes per backend")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every backend")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    net = attributor()
    batch = torch.rand(args.batch_size, 1, args.size, args.size)
    results = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results["eager"] = images_per_second(net, batch, args.batches)
        traced = torch.jit.freeze(torch.jit.trace(net, batch))
        results["torchscript (traced, frozen)"] = images_per_second(traced, batch, args.batches)
        try:
            import onnxruntime
        except ImportError:
            print("onnxruntime not installed (pip install -e '.[onnx]'): ONNX Runtime skipped", file=sys.stderr)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = str(Path(tmp) / "attributor.onnx")
                torch.onnx.export(net, (batch,), path, input_names=["image"], output_names=["map"], dynamo=False)
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
                session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                feed = {"image": batch.numpy()}
                results["onnxruntime (CPU)"] = images_per_second(lambda _: session.run(None, feed), batch, args.batches)
    for backend, rate in results.items():
        print(f"{backend:<30} {rate:8.1f} images/s  (batch {args.batch_size}, {args.size}², {args.threads} thread(s))")
    print(json.dumps({k: round(v, 1) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
