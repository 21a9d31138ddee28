import json
import subprocess
import sys

import pytest

from cfattr_monai.cli import build_parser, main


@pytest.mark.parametrize(
    "command,expected",
    [
        ([sys.executable, "-m", "cfattr_monai", "--help"], ["phantoms", "prepare"]),
        ([sys.executable, "scripts/prepare_data.py", "--help"], ["mini-mias", "shenzhen", "cbis-ddsm"]),
    ],
)
def test_entry_points_help(repo_root, command, expected):
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=repo_root)
    assert all(word in result.stdout for word in expected)


@pytest.mark.parametrize("argv", [["--help"], ["phantoms", "--help"], ["prepare", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    assert "usage: cfattr" in capsys.readouterr().out


def test_phantoms_writes_datalist(tmp_path, capsys):
    out = tmp_path / "set"
    code = main(["phantoms", "--kind", "chest", "--n", "10", "--size", "48", "--seed", "2", "--out", str(out),
                 "--contrast", "0.2", "0.3", "--max-lesions", "1", "--preview", str(tmp_path / "preview.png")])
    assert code == 0
    assert capsys.readouterr().out.split() == [str(out / "datalist.json"), str(tmp_path / "preview.png")]
    recorded = json.loads((out / "phantoms.json").read_text())
    assert recorded["kind"] == "chest" and recorded["seed"] == 2
    assert recorded["difficulty"]["contrast"] == [0.2, 0.3] and recorded["difficulty"]["max_lesions"] == 1
    assert sum(len(v) for v in json.loads((out / "datalist.json").read_text()).values()) == 10


@pytest.mark.parametrize(
    "argv,message",
    [
        (["phantoms", "--n", "3", "--out", "{tmp}/a"], "n must be at least 10"),
        (["phantoms", "--n", "10", "--contrast", "0.5", "0.1", "--out", "{tmp}/a"], "contrast"),
        (["phantoms", "--n", "10", "--splits", "0.5", "0.5", "0.5", "--out", "{tmp}/a"], "splits"),
        (["prepare", "mini-mias", "--src", "{tmp}/missing", "--out", "{tmp}/b"], "neither labels.csv"),
        (["prepare", "shenzhen", "--src", "{tmp}", "--out", "{tmp}/b", "--healthy", "{tmp}"], "--healthy applies"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, argv, message):
    code = main([arg.format(tmp=tmp_path) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith(f"cfattr {argv[0]}: error:") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [[], ["no-such-command"], ["phantoms", "--kind", "brain", "--out", "x"]])
def test_bad_usage_exits_with_argparse_code(argv):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2


def test_registrars_add_one_command_each():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"phantoms", "prepare"} <= set(commands)
    assert all(callable(parser.get_default("func")) for parser in commands.values())


def test_a_failed_pipeline_step_names_the_rerun_command_without_a_traceback(tmp_path, capsys, monkeypatch):
    import cfattr_monai.pipeline as pipeline

    def failing_step(step, fresh=False):
        raise RuntimeError(f"{step.name} failed (exit 1) after 1 s; rerun it alone with:\n  cd bundles/x && python ...")

    monkeypatch.setattr(pipeline, "run_step", failing_step)
    assert main(["pipeline", "--task", "demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfattr pipeline: error: classifier/train failed") and "rerun it alone" in err
    assert "Traceback" not in err
