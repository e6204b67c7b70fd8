"""A method is one folder: written as `prunekit/methods/<name>/` (here outside the install, on PYTHONPATH), it is
listed by `prunekit methods`, runs through `prunekit prune` and shows in `prunekit compare` as a method, with no
other file of prunekit edited."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from train_fixtures import sentiment_csv, tiny_bert_dir

RANDOM_HEADS = '''"""A throwaway method: a fraction of each layer's heads removed at random (importance layer)."""

import torch
from pydantic import Field

from prunekit.importance import UnitScores, unit_masks
from prunekit.methods.base import Method, MethodConfig, register


class RandomHeadsConfig(MethodConfig):
    sparsity: float = Field(0.5, ge=0, lt=1)  # fraction of each layer's heads removed
    seed: int = 0


@register
class RandomHeads(Method):
    """Random head pruning (a test fixture)."""

    name = "random_heads"
    config_class = RandomHeadsConfig

    def finalize(self, model):
        g = torch.Generator().manual_seed(self.config.seed)
        heads = {b.index: torch.rand(b.attention.num_heads, generator=g) for b in self.topo.blocks if b.attention}
        return unit_masks(self.topo, UnitScores(heads, {}), heads=self.config.sparsity)

    def report(self):
        return {"chosen_by": "chance"}
'''


def test_a_method_folder_is_found_run_and_compared(tmp_path):
    plugin = tmp_path / "plugin"
    folder = plugin / "prunekit" / "methods" / "random_heads"
    folder.mkdir(parents=True)
    (plugin / "prunekit" / "methods" / "__init__.py").write_text("")
    (folder / "__init__.py").write_text(RANDOM_HEADS)
    env = dict(os.environ, PYTHONPATH=str(plugin), OMP_NUM_THREADS="1")

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, env=env,
                              timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    listed = {row["name"]: row for row in json.loads(cli("methods", "--json"))}
    assert "random_heads" in listed and "sparsity=0.5" in listed["random_heads"]["config"]
    assert listed["random_heads"]["baseline"] == "no" and listed["magnitude"]["baseline"] == "yes"

    model, data = tiny_bert_dir(tmp_path), sentiment_csv(tmp_path, n=80)
    common = (
        f"model: {model}\n"
        f"data: {{dataset: {data}, task: classification, columns: {{text: review, label: verdict}}}}\n"
        "train: {epochs: 1, batch_size: 16, lr: 3.0e-3, max_length: 16}\n"
        "bench: {enabled: false}\n"
    )
    runs = {}
    methods = {"rand": "{name: random_heads, sparsity: 0.5}", "mag": "{name: magnitude, pattern: head, sparsity: 0.5}"}
    for name, method in methods.items():
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(common + f"method: {method}\n")
        runs[name] = tmp_path / f"run-{name}"
        cli("prune", str(recipe), "--out", str(runs[name]), "--no-progress")
    manifest = json.loads((runs["rand"] / "prunekit.json").read_text())
    assert manifest["method"] == "random_heads" and manifest["method_report"] == {"chosen_by": "chance"}
    assert [layer["heads"] for layer in manifest["structure"]] == [2, 2]  # 4 heads per layer, half removed

    compared = json.loads(cli("compare", str(runs["rand"]), str(runs["mag"]), "--json"))
    assert {row["method"] for row in compared["rows"]} == {"random_heads", "magnitude"}
    probe = "from prunekit.methods.base import is_baseline as b; print(b('random_heads'), b('magnitude'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["False", "True"]  # `compare --at` names it as a method, magnitude as a baseline


def test_a_second_prunekit_checkout_on_the_path_is_not_loaded_as_methods(tmp_path):
    """Only folders of methods register: another prunekit installation on sys.path (a second checkout, an older
    version) is not imported into this one, whose modules would clash with it."""
    other = tmp_path / "other"
    broken = other / "prunekit" / "methods" / "old_layout"
    broken.mkdir(parents=True)
    (other / "prunekit" / "__init__.py").write_text("")
    (other / "prunekit" / "methods" / "__init__.py").write_text("")
    (broken / "__init__.py").write_text("raise ImportError('an older prunekit was loaded')\n")
    probe = "import sys; sys.path.append(sys.argv[1]); from prunekit.methods.base import method_names as m; print(m())"
    proc = subprocess.run([sys.executable, "-c", probe, str(other)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "neuroprune" in proc.stdout and "old_layout" not in proc.stdout
