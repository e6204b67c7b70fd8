"""Every method's recipe fields carry their help, and `prunekit methods NAME` shows it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prunekit.methods import base
from prunekit.methods.base import create_method, method_names
from prunekit.methods.baselines import L1, Dense, GradualMagnitude, GradualMagnitudeConfig, L1Config
from prunekit.methods.mlpruning import MLPruning, MLPruningConfig
from prunekit.methods.nas import NAS, NASConfig
from prunekit.methods.neuroprune import NeuroPrune, NeuroPruneConfig
from prunekit.methods.nxm import Admm, AdmmConfig, Asp, AspConfig
from prunekit.methods.structured import Structured, StructuredConfig


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", method_names())
def test_every_field_has_help(name):
    config_class = base.REGISTRY[name].config_class
    missing = [key for key, field in config_class.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"{name} ({config_class.__name__}): fields without a description: {missing}"


def test_dense_registers_on_first_use():
    assert "dense" in method_names()
    method = create_method("dense")
    assert method.name == "dense" and method.is_baseline and method.masks() is None


def test_method_folders_export_method_and_config():
    pairs = [
        (Dense, base.MethodConfig),
        (GradualMagnitude, GradualMagnitudeConfig),
        (L1, L1Config),
        (MLPruning, MLPruningConfig),
        (NAS, NASConfig),
        (NeuroPrune, NeuroPruneConfig),
        (Admm, AdmmConfig),
        (Asp, AspConfig),
        (Structured, StructuredConfig),
    ]
    for cls, config in pairs:
        assert base.REGISTRY[cls.name] is cls and cls.config_class is config


def test_cli_lists_one_methods_fields_with_help():
    r = run("methods", "neuroprune", "--json")
    assert r.returncode == 0, r.stderr
    fields = {f["name"]: f for f in json.loads(r.stdout)}
    target = fields["target_sparsity"]
    assert target["default"] is None and target["type"] == "float | None"
    assert target["help"] == NeuroPruneConfig.model_fields["target_sparsity"].description and "remove" in target["help"]
    assert fields["theta"]["default"] == 0.15 and fields["theta"]["help"]
    assert all(set(f) == {"name", "type", "default", "help"} and f["help"] for f in fields.values())


def test_cli_unknown_method_is_one_line():
    r = run("methods", "no-such-method")
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown method 'no-such-method'" in lines[0] and "neuroprune" in lines[0]
    assert "Traceback" not in r.stderr
