"""Smoke test of scripts/benchmark.py on tiny sizes: the JSON it writes, its options and its errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from cfattr_monai.data.datalist import save_png
from cfattr_monai.data.phantoms import generate_phantom
from cfattr_monai.networks.attribution import AttentionGatedUNet
from cfattr_monai.networks.mobilenet import MobileNetV1

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
RUN = ["--size", "32", "32", "--batch", "2", "--repeats", "1", "--warmup", "0", "--iterative-max-iterations", "2"]
TINY = ["--backbone", "mobilenet_v1", "--width-mult", "0.25", "--inpainter-levels", "3", *RUN]
TINY_BUNDLE = ["--backbone", "mobilenet_v1", *RUN]  # the networks come from --attributor-bundle


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_the_documented_json(benchmark, tmp_path, capsys):
    out = tmp_path / "bench.json"
    benchmark.main([*TINY, "--iterative-images", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"device", "size", "batch", "maps_per_s", "ratios"} <= set(result)
    assert result["size"] == [32, 32] and result["batch"] == 2
    rates = result["maps_per_s"]
    assert set(rates) == {"ours", "ours_with_counterfactual", "gradcam", "gradcam_trainable", "gradcam_head_only",
                          "saliency", "saliency_batched", "iterative", "classifier_forward"}
    assert all(rate > 0 for rate in rates.values())
    assert set(result["ratios"]) == {"ours_vs_gradcam", "ours_vs_gradcam_trainable", "ours_vs_gradcam_head_only",
                                     "ours_vs_saliency", "ours_vs_saliency_batched", "ours_vs_iterative",
                                     "ours_vs_forward"}
    assert result["ratios"]["ours_vs_gradcam"] == pytest.approx(rates["ours"] / rates["gradcam"])
    assert result["iterative"]["runs"][0]["iterations"] <= 2
    assert result["settings"]["compile"] is False and result["settings"]["compiled_methods"] == []
    flops = result["gflops_per_image"]  # the attributor runs the classifier's features plus its decoder
    assert 0 < flops["classifier_forward"] < flops["ours"]
    assert "| ours |" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.tmp"))


def test_more_iterative_images_than_the_batch_are_named(benchmark, tmp_path, capsys):
    result = benchmark.main([*TINY, "--iterative-images", "3", "--methods", "classifier_forward",
                             "--out", str(tmp_path / "b.json")])
    assert result["iterative"]["images"] == 2
    assert "--iterative-images 3: the batch has 2 image(s)" in capsys.readouterr().err


def test_iterative_loss_takes_the_given_threshold_and_delta(benchmark, tmp_path, monkeypatch):
    made = []
    original = benchmark.CounterfactualLoss

    def recording_loss(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(benchmark, "CounterfactualLoss", recording_loss)
    result = benchmark.main([*TINY, "--iterative-images", "1", "--threshold", "0.3", "--delta", "0.05",
                             "--out", str(tmp_path / "b.json")])
    assert (made[0].threshold, made[0].delta) == (0.3, 0.05)
    assert (result["iterative"]["threshold"], result["iterative"]["delta"]) == (0.3, 0.05)


@pytest.fixture
def tiny_bundle(benchmark, tmp_path, monkeypatch):
    """An attributor bundle folder whose overlay ``configs/a.json`` trains into ``models_a/`` (with a recorded θ and
    δ there), and whose ``load_explainer`` returns tiny networks."""
    from cfattr_monai.explain.counterfactual import CounterfactualExplainer
    from cfattr_monai.networks.attribution import AttentionGatedUNet
    from cfattr_monai.networks.inpainter import PartialConvUNet
    from cfattr_monai.transforms.marginalize import InpaintMarginalizer

    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    for name, folder in (("inference.json", "models"), ("a.json", "models_a")):
        (tmp_path / "bundle" / "configs" / name).write_text(json.dumps({"ckpt_dir": f"$@bundle_root + '/{folder}'"}))
    (tmp_path / "bundle" / "models_a").mkdir()
    record = {"sha256": "x", "classification_threshold": 0.3, "delta": 0.05}
    (tmp_path / "bundle" / "models_a" / "classifier_fingerprint.json").write_text(json.dumps(record))
    calls = []

    def load_explainer(bundle, overlays, checkpoint, device):
        calls.append((bundle, overlays, checkpoint))
        classifier = MobileNetV1(width_mult=0.25).eval().requires_grad_(False)
        inpainter = PartialConvUNet(num_levels=3).eval().requires_grad_(False)
        attributor = AttentionGatedUNet(classifier).eval()
        return CounterfactualExplainer(attributor, classifier, InpaintMarginalizer(inpainter))

    monkeypatch.setattr(benchmark, "load_explainer", load_explainer)
    return tmp_path / "bundle", calls


@pytest.mark.parametrize(
    "extra,threshold,delta", [([], 0.3, 0.05), (["--threshold", "0.4", "--delta", "0.2"], 0.4, 0.2)]
)
def test_an_attributor_bundle_is_timed_with_its_recorded_threshold_and_delta(
    benchmark, tiny_bundle, extra, threshold, delta
):
    bundle, calls = tiny_bundle
    result = benchmark.main([*TINY_BUNDLE, "--iterative-images", "1", "--attributor-bundle", str(bundle), "--overlays",
                             "configs/a.json", *extra, "--out", str(bundle / "b.json")])
    checkpoint = bundle / "models_a" / "model.pt"  # the overlay's ckpt_dir
    assert calls == [(str(bundle), ["configs/a.json"], checkpoint)]
    assert (result["iterative"]["threshold"], result["iterative"]["delta"]) == (threshold, delta)
    assert result["settings"]["weights"] == {"attributor_bundle": str(bundle), "overlays": ["configs/a.json"],
                                             "checkpoint": str(checkpoint)}
    assert result["settings"]["inpainter_levels"] == 3


@pytest.mark.parametrize("extra,kind", [([], "mammo"), (["--phantoms", "chest"], "chest")])
def test_the_input_phantoms_follow_the_backbone_unless_given(benchmark, tmp_path, monkeypatch, extra, kind):
    kinds = []
    original = benchmark.phantom_batch
    monkeypatch.setattr(benchmark, "phantom_batch", lambda k, *a, **kw: kinds.append(k) or original(k, *a, **kw))
    result = benchmark.main([*TINY, "--iterative-images", "0", *extra, "--out", str(tmp_path / "b.json")])
    assert kinds == [kind] and result["settings"]["phantoms"] == kind


@pytest.mark.parametrize("kind,size", [("chest", (40, 32)), ("mammo", (32, 48))])
def test_the_input_phantoms_are_what_the_classifier_bundle_feeds_its_network(benchmark, tmp_path, kind, size):
    image = generate_phantom(kind, max(size), np.random.default_rng([0, 0]), label=1)["image"]
    save_png(np.round(image * 255.0).astype(np.uint8), tmp_path / "p.png")
    parser = ConfigParser()
    parser.read_config(BUNDLES / "classifier" / "configs" / "train.json")
    parser["image_size"] = list(size)
    preprocess = Compose(parser.get_parsed_content("preprocessing"))
    expected = preprocess({"image": str(tmp_path / "p.png"), "label": 1})["image"]
    torch.testing.assert_close(benchmark.phantom_batch(kind, size, 1)[0], expected.as_tensor(), atol=1e-5, rtol=0)


def test_an_attributor_bundle_of_another_backbone_is_refused(benchmark, tiny_bundle):
    bundle, _ = tiny_bundle
    argv = [*TINY_BUNDLE, "--iterative-images", "0", "--attributor-bundle", str(bundle),
            "--out", str(bundle / "b.json")]
    argv[argv.index("mobilenet_v1")] = "densenet121"
    with pytest.raises(ValueError, match="not the --backbone densenet121's DenseNet"):
        benchmark.main(argv)
    assert not (bundle / "b.json").exists()


def test_iterative_can_be_skipped_and_checkpoints_are_loaded(benchmark, tmp_path):
    ckpt = tmp_path / "classifier.pt"
    torch.save(MobileNetV1(width_mult=0.25).state_dict(), ckpt)
    result = benchmark.main([*TINY, "--iterative-images", "0", "--classifier-ckpt", str(ckpt),
                             "--out", str(tmp_path / "b.json")])
    assert result["maps_per_s"]["iterative"] is None and result["ratios"]["ours_vs_iterative"] is None
    assert result["settings"]["weights"] == {"classifier": str(ckpt), "inpainter": "random", "attributor": "random"}


def test_an_attributor_checkpoint_brings_its_classifier(benchmark, tmp_path):
    """The attributor's state dict holds its classifier: timed as that one, and refused beside another one."""
    torch.manual_seed(1)
    trained_on = MobileNetV1(width_mult=0.25)
    torch.save(AttentionGatedUNet(trained_on).state_dict(), tmp_path / "attributor.pt")
    torch.save(trained_on.state_dict(), tmp_path / "same.pt")
    torch.manual_seed(2)
    torch.save(MobileNetV1(width_mult=0.25).state_dict(), tmp_path / "other.pt")
    argv = [*TINY, "--iterative-images", "0", "--attributor-ckpt", str(tmp_path / "attributor.pt"),
            "--out", str(tmp_path / "b.json")]
    alone = benchmark.main(argv)["settings"]["weights"]["classifier"]
    assert alone == f"{tmp_path / 'attributor.pt'} (the classifier the attributor holds)"
    assert benchmark.main([*argv, "--classifier-ckpt", str(tmp_path / "same.pt")])["settings"]["weights"][
        "classifier"] == str(tmp_path / "same.pt")
    (tmp_path / "b.json").unlink()
    with pytest.raises(ValueError, match="holds another classifier than --classifier-ckpt .*other.pt"):
        benchmark.main([*argv, "--classifier-ckpt", str(tmp_path / "other.pt")])
    assert not (tmp_path / "b.json").exists()


def test_monai_gradcam_keeps_its_hooks_on_its_own_copy(benchmark, tmp_path, monkeypatch):
    networks = {}

    def spy(name, cls):
        def build(network, *args, **kwargs):
            networks[name] = network
            return cls(network, *args, **kwargs)
        return build

    monkeypatch.setattr(benchmark, "GradCAMBaseline", spy("gradcam", benchmark.GradCAMBaseline))
    monkeypatch.setattr(benchmark, "SaliencyBaseline", spy("saliency", benchmark.SaliencyBaseline))
    benchmark.main([*TINY, "--iterative-images", "0", "--out", str(tmp_path / "b.json")])
    assert any(m._forward_hooks for m in networks["gradcam"].modules())
    assert not any(m._forward_hooks or m._backward_hooks for m in networks["saliency"].modules())


@pytest.mark.parametrize("extra, channels_last, amp", [
    (["--channels-last"], True, False),
    (["--amp"], False, True),
    (["--amp", "--channels-last"], True, True),
])
def test_memory_format_and_bfloat16_options_time_every_method(benchmark, tmp_path, extra, channels_last, amp):
    result = benchmark.main([*TINY, "--iterative-images", "1", *extra, "--out", str(tmp_path / "b.json")])
    assert all(rate > 0 for rate in result["maps_per_s"].values())
    assert (result["settings"]["channels_last"], result["settings"]["amp_bf16"]) == (channels_last, amp)


@pytest.mark.parametrize("methods, timed", [
    (["classifier_forward"], ["ours", "classifier_forward"]),
    (["saliency_batched", "ours"], ["ours", "saliency_batched"]),
])
def test_only_the_given_methods_are_timed(benchmark, tmp_path, capsys, methods, timed):
    out = str(tmp_path / "b.json")
    result = benchmark.main([*TINY, "--iterative-images", "0", "--methods", *methods, "--out", out])
    assert result["settings"]["methods"] == timed and list(result["seconds_per_batch"]) == timed
    assert [name for name, rate in result["maps_per_s"].items() if rate is not None] == timed
    assert [name for name, ratio in result["ratios"].items() if ratio is not None] == [
        f"ours_vs_{name.removeprefix('classifier_')}" for name in timed[1:]]
    assert "| gradcam | MONAI GradCAM, frozen weights (gradient through the input) | – | – |" in (
        capsys.readouterr().out)


def test_an_inpainter_bundle_gives_the_trained_inpainter(benchmark, tmp_path, monkeypatch):
    from cfattr_monai.networks.inpainter import PartialConvUNet

    calls = []

    def load_network(bundle, overlays, device):
        calls.append((bundle, overlays))
        return PartialConvUNet(num_levels=2).eval().requires_grad_(False)

    monkeypatch.setattr(benchmark, "load_network", load_network)
    argv = [a for a in TINY if a not in ("--inpainter-levels", "3")]
    result = benchmark.main([*argv, "--iterative-images", "1", "--inpainter-bundle", "bundles/inpainter",
                             "--inpainter-overlays", "configs/task_phantom_chest.json",
                             "--out", str(tmp_path / "b.json")])
    assert calls == [("bundles/inpainter", ["configs/task_phantom_chest.json"])]
    assert result["settings"]["inpainter_levels"] == 2
    assert result["settings"]["weights"]["inpainter"] == {"bundle": "bundles/inpainter",
                                                          "overlays": ["configs/task_phantom_chest.json"]}
    assert result["maps_per_s"]["iterative"] > 0


@pytest.mark.parametrize(
    "extra,error,match",
    [
        (["--classifier-ckpt", "missing.pt"], FileNotFoundError, "--classifier-ckpt: checkpoint missing.pt"),
        (["--classifier-ckpt", "{wrong}"], ValueError, "does not fit MobileNetV1"),
    ],
)
def test_bad_checkpoints_name_the_option(benchmark, tmp_path, extra, error, match):
    wrong = tmp_path / "wrong.pt"
    torch.save(MobileNetV1(width_mult=0.5).state_dict(), wrong)
    extra = [e.replace("{wrong}", str(wrong)) for e in extra]
    with pytest.raises(error, match=match):
        benchmark.main([*TINY, "--iterative-images", "0", *extra, "--out", str(tmp_path / "b.json")])


@pytest.mark.parametrize(
    "argv",
    [
        ["--backbone", "resnet", "--size", "32", "32", "--out", "x.json"],
        ["--backbone", "densenet121", "--size", "16", "16", "--out", "x.json"],
        ["--backbone", "densenet121", "--size", "64", "64", "--batch", "0", "--out", "x.json"],
        ["--backbone", "densenet121", "--size", "64", "--out", "x.json"],
        *[["--backbone", "densenet121", "--size", "64", "64", "--out", "x.json", flag, value] for flag, value in (
            ("--warmup", "-3"), ("--threads", "-2"), ("--threads", "0"), ("--iterative-images", "-1"),
            ("--iterative-max-iterations", "0"), ("--delta", "5"), ("--delta", "0"),
            ("--threshold", "0"), ("--threshold", "1"), ("--inpainter-levels", "0"),
            ("--width-mult", "0"), ("--passes", "0"), ("--methods", "iterative"), ("--methods", "gradcam_all"),
        )],
        *[["--backbone", "densenet121", "--size", "64", "64", "--out", "x.json", "--inpainter-bundle", "b", *extra]
          for extra in (["--inpainter-ckpt", "i.pt"], ["--inpainter-levels", "3"], ["--attributor-bundle", "a"])],
    ],
)
def test_bad_arguments_exit_with_usage(benchmark, argv):
    with pytest.raises(SystemExit) as stop:
        benchmark.parse_args(argv)
    assert stop.value.code == 2


def test_the_arguments_the_bad_cases_start_from_parse(benchmark):
    args = benchmark.parse_args(["--backbone", "densenet121", "--size", "64", "64", "--out", "x.json"])
    assert (args.backbone, args.size, args.batch) == ("densenet121", [64, 64], 8)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--attributor-bundle", "a", "--classifier-ckpt", "c.pt"], "--attributor-bundle brings its own networks"),
        (["--attributor-bundle", "a", "--inpainter-levels", "3"], "--attributor-bundle brings its own networks"),
        (["--overlays", "configs/task_cxr.json"], "--overlays and --checkpoint apply to an --attributor-bundle"),
        (["--checkpoint", "models/model.pt"], "--overlays and --checkpoint apply to an --attributor-bundle"),
        (["--inpainter-overlays", "configs/task_cxr.json"], "--inpainter-overlays applies to an --inpainter-bundle"),
    ],
)
def test_options_the_chosen_networks_would_ignore_are_refused(benchmark, capsys, extra, message):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--backbone", "densenet121", "--size", "64", "64", "--out", "x.json", *extra])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("repeats, warmup, passes", [(1, 0, 1), (3, 1, 2), (2, 2, 3)])
def test_methods_are_timed_in_warm_blocks_over_several_passes(benchmark, repeats, warmup, passes):
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("ours", "gradcam", "forward")}
    timings = benchmark.seconds_per_call(calls, repeats, warmup, torch.device("cpu"), passes)
    block = repeats + warmup
    warm_round = "ogf" if warmup else ""  # every method once before the timed passes
    assert "".join(name[0] for name in order) == warm_round + ("o" * block + "g" * block + "f" * block) * passes
    assert set(timings) == set(calls) and all(wall >= 0 and cpu >= 0 for wall, cpu in timings.values())
