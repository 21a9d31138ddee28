"""Load a trained network out of a MONAI bundle folder, frozen, for use inside another bundle.

The attributor bundle explains the classifier bundle's network and marginalizes with the inpainter bundle's
network; it gets both through :func:`load_network` instead of copying their configs, so a task overlay (e.g.
``configs/task_cxr.json``) changes the architecture, and the folder the trained weights are read from
(``ckpt_dir``), in exactly one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from torch import nn

__all__ = ["bundle_checkpoint", "fingerprint", "load_network", "load_weights", "read_state_dict", "shutdown_distributed"]

_SHOWN_KEYS = 5


def bundle_config_files(bundle_dir: str | Path, overlays: Sequence[str | Path] = ()) -> list[Path]:
    """``configs/inference.json`` of a bundle followed by its task ``overlays`` (paths relative to the bundle)."""
    bundle_dir = Path(bundle_dir)
    return [bundle_dir / "configs" / "inference.json", *(bundle_dir / o for o in overlays)]


def read_bundle_config(bundle_dir: str | Path, overlays: Sequence[str | Path] = (), caller: str = "read_bundle_config"):
    """:func:`bundle_config_files` parsed into one ``ConfigParser`` with ``bundle_root`` set to ``bundle_dir``.

    Raises:
        FileNotFoundError: a config file is missing; the message names it and the ``caller``.
    """
    config_files = bundle_config_files(bundle_dir, overlays)
    for path in config_files:
        if not path.is_file():
            raise FileNotFoundError(
                f"{caller}: config file {path} not found; pass the bundle folder (with configs/inference.json) "
                "and overlays relative to it, e.g. ['configs/task_cxr.json']."
            )
    parser = ConfigParser()
    parser.read_config([str(p) for p in config_files])
    parser["bundle_root"] = str(bundle_dir)
    return parser


def bundle_checkpoint(
    bundle_dir: str | Path, overlays: Sequence[str | Path] = (), checkpoint: str | Path | None = None
) -> Path:
    """The trained weights of a bundle, as an absolute path: ``bundle_dir / checkpoint`` when given, else ``model.pt``
    in the ``ckpt_dir`` of its ``configs/inference.json`` merged with ``overlays`` (so an overlay that trains into
    another folder, e.g. ``models_chest/``, is loaded from there), else ``models/model.pt``. Absolute, so that the
    result passed on as a ``checkpoint`` (relative to the bundle) names the same file for a relative ``bundle_dir``."""
    if checkpoint is not None:
        return (Path(bundle_dir) / checkpoint).resolve()
    parser = read_bundle_config(bundle_dir, overlays, caller="bundle_checkpoint")
    return _configured_checkpoint(parser, bundle_dir).resolve()


def _configured_checkpoint(parser: ConfigParser, bundle_dir: str | Path) -> Path:
    """``model.pt`` in the parsed bundle config's ``ckpt_dir``, or ``bundle_dir/models/model.pt`` without one."""
    if "ckpt_dir" not in parser:
        return Path(bundle_dir) / "models" / "model.pt"
    return Path(parser.get_parsed_content("ckpt_dir")) / "model.pt"


def load_network(
    bundle_dir: str | Path,
    overlays: Sequence[str | Path] = (),
    checkpoint: str | Path | None = None,
    network_key: str = "network_def",
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Instantiate ``network_key`` of a bundle's inference config and load its trained weights.

    Args:
        bundle_dir: the bundle folder (holding ``configs/inference.json``).
        overlays: further config files merged over ``configs/inference.json`` in order, relative to ``bundle_dir``
            (or absolute), e.g. ``["configs/task_cxr.json"]``.
        checkpoint: state dict file, relative to ``bundle_dir`` (or absolute), loaded with ``weights_only=True``;
            None: :func:`bundle_checkpoint` (``model.pt`` in the merged config's ``ckpt_dir``).
        network_key: config key of the network definition.
        device: device the network is moved to.

    Returns:
        The network in eval mode with ``requires_grad=False`` on every parameter.

    Raises:
        FileNotFoundError: a config file or the checkpoint does not exist.
        KeyError: ``network_key`` is not in the merged config.
        ValueError: the checkpoint is not a state dict, or its keys / shapes do not match the configured network.

    Example:
        >>> classifier = load_network("bundles/classifier")  # doctest: +SKIP
        >>> classifier(torch.rand(1, 1, 128, 128)).shape  # doctest: +SKIP
        torch.Size([1, 1])
    """
    bundle_dir = Path(bundle_dir)
    parser = read_bundle_config(bundle_dir, overlays, caller="load_network")
    config_files = bundle_config_files(bundle_dir, overlays)
    if network_key not in parser:
        raise KeyError(f"load_network: key {network_key!r} not found in {', '.join(map(str, config_files))}.")
    network: nn.Module = parser.get_parsed_content(network_key, instantiate=True)

    ckpt_path = _configured_checkpoint(parser, bundle_dir) if checkpoint is None else bundle_dir / checkpoint
    load_weights(network, ckpt_path, config_files)
    network.to(device).eval()
    network.requires_grad_(False)
    return network


def load_weights(network: nn.Module, ckpt_path: str | Path, config_files: Sequence[Path] = ()) -> nn.Module:
    """Load a state dict file into ``network`` with ``weights_only=True``, or raise an error naming the file.

    Args:
        network: the configured network.
        ckpt_path: state dict file (e.g. ``models/model.pt``).
        config_files: the configs that defined ``network``, named in the error when the weights do not fit.

    Raises:
        FileNotFoundError: no such file; the message says to train the bundle that writes it.
        ValueError: a folder instead of a file, or a file that is not a readable weights-only checkpoint, holds
            NaN/Inf, is not a state dict, or is for another network.

    Example:
        >>> net = nn.Linear(2, 1); torch.save(net.state_dict(), "/tmp/linear.pt")
        >>> load_weights(nn.Linear(2, 1), "/tmp/linear.pt").weight.shape
        torch.Size([1, 2])
    """
    ckpt_path = Path(ckpt_path)
    if ckpt_path.is_dir():
        raise ValueError(f"checkpoint {ckpt_path} is a folder, expected a weights file such as {ckpt_path}/model.pt.")
    if not ckpt_path.is_file():
        raise FileNotFoundError(
            f"checkpoint {ckpt_path} not found; train the bundle first (in its folder: python -m monai.bundle run "
            f"--config_file configs/train.json --ckpt_dir {ckpt_path.parent}), or point ckpt_dir / checkpoint at the "
            "folder / file that holds the trained model.pt."
        )
    state = read_state_dict(ckpt_path)
    _check_state_dict(state, network, ckpt_path, config_files)
    network.load_state_dict(state)
    return network


def read_state_dict(ckpt_path: str | Path) -> object:
    """``torch.load(ckpt_path, weights_only=True)`` on the CPU, or a ValueError that names the file and the fix.

    Whatever torch raises on a corrupt, truncated, empty or non-checkpoint file becomes that ValueError; a tensor
    with NaN or Inf values (weights of a diverged training) is refused too.

    Raises:
        ValueError: the file cannot be read weights-only, or holds non-finite tensors.
    """
    ckpt_path = Path(ckpt_path)
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError (empty), KeyError (text), …
        reason = (str(err).strip().splitlines() or ["no message"])[0][:80]
        raise ValueError(
            f"{ckpt_path} is not a checkpoint torch.load can read with weights_only=True ({type(err).__name__}: "
            f"{reason}): the file is empty, corrupt, truncated, or holds Python objects besides tensors. Re-train or "
            "re-copy the bundle's models/model.pt; do not load it with weights_only=False unless you trust its source "
            "(unpickling runs arbitrary code)."
        ) from err
    if isinstance(state, Mapping):
        broken = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
        if broken:
            raise ValueError(
                f"{ckpt_path}: {len(broken)} tensor(s) hold NaN or Inf ({', '.join(map(str, broken[:_SHOWN_KEYS]))}): "
                "the training that wrote it diverged; re-train, or take an earlier models/checkpoint*.pt."
            )
    return state


def _check_state_dict(state: object, network: nn.Module, ckpt_path: Path, config_files: Sequence[Path]) -> None:
    """Raise a ValueError that names the file and the mismatching keys unless ``state`` fits ``network``."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = type(state).__name__ if not isinstance(state, Mapping) else "a dict of non-tensors, keys " + ", ".join(
            list(map(str, state))[:_SHOWN_KEYS]
        )
        raise ValueError(
            f"load_network: {ckpt_path} holds {kind}, expected a state dict (name -> tensor) as written by the "
            "bundle's CheckpointSaver to models/model.pt; trainer checkpoints (models/checkpoint*.pt) are for resuming."
        )
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or reshaped:
        details = "; ".join(
            f"{label} ({len(keys)}): {', '.join(keys[:_SHOWN_KEYS])}{', …' if len(keys) > _SHOWN_KEYS else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", reshaped))
            if keys
        )
        configured = f" configured by {', '.join(map(str, config_files))}" if config_files else ""
        raise ValueError(
            f"{ckpt_path} was saved from another network than {type(network).__qualname__}{configured}: "
            f"{details}. Use the task overlays the checkpoint was trained with (bundle run: --config_file "
            "\"['configs/<config>.json','configs/task_cxr.json']\"; Python: overlays=['configs/task_cxr.json']), or "
            "point the checkpoint at weights of this network."
        )


def fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and values), to tell trained weights apart.

    Example:
        >>> fingerprint(nn.Linear(2, 1)) == fingerprint(nn.Linear(2, 1))
        False
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def shutdown_distributed(*modules: nn.Module) -> None:
    """Destroy the default process group, after releasing the hold ``modules`` (DDP-wrapped networks) have on it.

    A ``DistributedDataParallel`` module keeps the process group alive through its C++ reducer, which its C++
    logger (``module.logger``) holds as well, so ``destroy_process_group()`` alone leaves gloo's worker threads to be
    torn down at interpreter exit, where a process may abort ("terminate called without an active exception").
    Measured with torch 2.13 on two CPU processes: 7 of 30 runs aborted with the plain call; releasing the reducer
    alone still left the threads running (one abort in a CI run); releasing the logger too ends them here, in
    ``destroy_process_group()``. For a bundle's ``finalize``: ``"$cfattr_monai.bundle.shutdown_distributed(@network)"``.
    Nothing happens outside a process group.

    Example:
        >>> shutdown_distributed(nn.Linear(2, 1))  # not distributed: a no-op
    """
    import gc

    import torch.distributed as dist

    for module in modules:
        if isinstance(module, nn.parallel.DistributedDataParallel) and hasattr(module, "reducer"):
            del module.reducer
            module.logger = None
            module.process_group = None
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
