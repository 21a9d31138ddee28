import json
import os
import subprocess
import sys

import pytest

from cfattr_monai.cli import main as cli_main
from cfattr_monai.demo import INFERENCE, collect_metrics, main, pin_threads
from cfattr_monai.pipeline import Step, pipeline_steps, run_step, trained_model

TASKS = [
    ("demo", ()),
    ("mammo", ("configs/task_mammo.json",)),
    ("cxr", ("configs/task_cxr.json",)),
]


@pytest.mark.parametrize("task,overlays", TASKS)
def test_steps_run_the_bundles_in_order_with_the_task_overlays(task, overlays):
    steps = pipeline_steps(task, datalist="/data/datalist.json")
    assert [s.bundle for s in steps] == ["classifier"] * 2 + ["inpainter"] * 2 + ["attributor"] * 2
    assert [s.trains for s in steps] == [True, False] * 3
    for step in steps:
        assert step.configs[len(step.configs) - len(overlays):] == overlays
        assert [c for c in step.configs if "task_" in c] == list(overlays)  # the demo steps take no overlay
        assert step.overrides["datalist"].endswith("datalist.json")
        assert step.overrides["phantoms"] == "False"  # the given data set, no phantoms made into its folder
    assert all("datalist" not in s.overrides and "phantoms" not in s.overrides for s in pipeline_steps(task))
    evaluate = steps[1]
    assert evaluate.configs[:2] == ("configs/train.json", "configs/evaluate.json")
    assert json.loads(steps[2].overrides["classifier_overlays"]) == list(overlays)
    assert "inpainter_overlays" not in steps[2].overrides
    # the attributor reads both bundles, and its Table 1 (evaluate) loads itself, all with the task overlays
    for key in ("classifier_overlays", "inpainter_overlays", "attributor_overlays"):
        assert json.loads(steps[5].overrides[key]) == list(overlays), key


@pytest.mark.parametrize(
    "task,folder", [("demo", "models"), ("mammo", "models_mammo"), ("cxr", "models_cxr")]
)
def test_each_task_trains_into_its_own_folder(task, folder, repo_root):
    trains = [step for step in pipeline_steps(task) if step.trains]
    bundles = ("classifier", "inpainter", "attributor")
    assert [trained_model(s) for s in trains] == [repo_root / "bundles" / b / folder / "model.pt" for b in bundles]


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task 'ct'"):
        pipeline_steps("ct")


@pytest.mark.parametrize("folder,skipped", [("models_task", True), ("models", False)])
def test_training_is_skipped_when_the_model_exists(folder, skipped, tmp_path, capsys, monkeypatch):
    """Only a model.pt in the ckpt_dir of the step's configs (here a task overlay's) skips the training."""
    configs = tmp_path / "b" / "configs"
    configs.mkdir(parents=True)
    (configs / "inference.json").write_text(json.dumps({"ckpt_dir": "$@bundle_root + '/models'"}))
    (configs / "task.json").write_text(json.dumps({"ckpt_dir": "$@bundle_root + '/models_task'"}))
    (tmp_path / "b" / folder).mkdir()
    (tmp_path / "b" / folder / "model.pt").write_bytes(b"")
    monkeypatch.setattr(sys, "executable", "false")  # a training that does start fails at once
    step = Step("b/train", "b", ("configs/train.json", "configs/task.json"), trains=True)
    if skipped:
        assert run_step(step, bundles_dir=tmp_path) == 0.0
        assert f"skipped, {tmp_path / 'b' / folder / 'model.pt'} exists" in capsys.readouterr().out
    else:
        with pytest.raises(RuntimeError, match="b/train failed"):
            run_step(step, bundles_dir=tmp_path)


def test_a_failing_bundle_run_names_the_step_and_the_command(tmp_path, monkeypatch):
    (tmp_path / "b").mkdir()
    monkeypatch.setattr(sys, "executable", "false")
    with pytest.raises(RuntimeError, match=r"(?s)b/evaluate failed \(exit 1\).*cd .*b && python -m monai.bundle run"):
        run_step(Step("b/evaluate", "b", ("configs/evaluate.json",)), bundles_dir=tmp_path)


def test_metrics_collect_what_exists_and_none_elsewhere(tmp_path):
    (tmp_path / "classifier" / "eval").mkdir(parents=True)
    (tmp_path / "classifier" / "eval" / "roc.json").write_text(json.dumps({"auc": 0.87, "auc_ci": [0.8, 0.93]}))
    metrics = collect_metrics(tmp_path / "out", bundles_dir=tmp_path)
    assert metrics["classifier"]["auc"] == 0.87
    assert metrics["inpainter"]["auc_none"] is None and metrics["timing"] is None and metrics["acceptance"] is None
    assert metrics["inpainter"]["twin_abs_dp"] is None


def test_metrics_collect_the_twin_and_acceptance_figures(tmp_path):
    (tmp_path / "inpainter" / "eval").mkdir(parents=True)
    (tmp_path / "inpainter" / "eval" / "marginalization.json").write_text(json.dumps({"twin_abs_dp": {"inpaint": 0.03}}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "acceptance.json").write_text(json.dumps({"flipped": 0.8, "twin_flipped": 0.78}))
    metrics = collect_metrics(tmp_path / "out", bundles_dir=tmp_path)
    assert metrics["inpainter"]["twin_abs_dp"] == {"inpaint": 0.03}
    assert metrics["acceptance"] == {"flipped": 0.8, "twin_flipped": 0.78}


THREAD_CASES = [
    (2, "2"),
    (1, "1"),
    (0, None),  # torch's default: the environment is left as it is
]


@pytest.mark.parametrize("threads,expected", THREAD_CASES)
def test_the_demo_pins_the_thread_count_of_the_processes_it_starts(threads, expected, monkeypatch):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    pin_threads(threads)
    assert os.environ.get("OMP_NUM_THREADS") == expected
    assert os.environ.get("MKL_NUM_THREADS") == expected


ENTRY_POINTS = [
    ("python -m cfattr_monai.demo", lambda argv: main(argv)),
    ("cfattr demo", lambda argv: cli_main(["demo", *argv])),
]


@pytest.mark.parametrize("name,entry", ENTRY_POINTS)
def test_a_negative_thread_count_is_refused_before_any_stage(name, entry, monkeypatch, capsys):
    monkeypatch.setattr("cfattr_monai.demo.run_demo", lambda *a: pytest.fail("the demo must not start"))
    with pytest.raises(SystemExit):
        entry(["--threads", "-1"])
    assert "--threads must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("name,entry", ENTRY_POINTS)
def test_both_demo_entry_points_pin_the_threads_and_run_the_demo(name, entry, monkeypatch, tmp_path):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    calls = []
    monkeypatch.setattr("cfattr_monai.demo.run_demo", lambda out, fresh: calls.append((out, fresh)))
    entry(["--out", str(tmp_path), "--fresh"])
    assert calls == [(tmp_path.resolve(), True)]
    assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "2"


def test_the_demo_inference_starts_a_new_table_each_run(tmp_path, monkeypatch):
    """A second `make demo` reuses the trained bundles but writes the attributor's explanations again: the step runs
    the attributor's inference.json with --overwrite True (the bundle refuses an existing table without it)."""
    (tmp_path / "attributor").mkdir()
    runs = []
    def fake_run(cmd, cwd):
        runs.append((cmd, cwd))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr("subprocess.run", fake_run)
    for _ in range(2):
        run_step(INFERENCE, bundles_dir=tmp_path)
    assert len(runs) == 2 and runs[0] == runs[1]
    cmd, cwd = runs[0]
    assert cwd == tmp_path / "attributor"
    assert cmd[1:] == ["-m", "monai.bundle", "run", "--config_file", '["configs/inference.json"]',
                       "--overwrite", "True"]