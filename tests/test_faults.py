"""Fault tolerance: `prunekit prune` killed with SIGKILL at many points (mid-checkpoint, mid-step, mid-save of
the dense stage and of the final model, and at random moments) resumes with --resume to the very same weights
as an uninterrupted run; a corrupt newest checkpoint falls back to the previous one with a warning.

The kills come from the test hook in prunekit.core.files.fault_point (PRUNEKIT_FAULT_AT="KIND:N": the
process SIGKILLs itself the N-th time it reaches KIND) and, in the slow test, from outside at random times.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_fixtures import sentiment_csv, tiny_bert_dir

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # same threads in every process: same numerics


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    model_dir = tiny_bert_dir(root)
    csv_path = sentiment_csv(root, n=120)  # 96 training rows: 6 steps per epoch at batch 16
    path = root / "recipe.yaml"
    path.write_text(
        f"model: {model_dir}\n"
        f"data: {{dataset: {csv_path}, task: classification, columns: {{text: review, label: verdict}}}}\n"
        "finetune: {epochs: 2, batch_size: 16, lr: 1.0e-2, max_length: 16, checkpoint_every: 4, log_every: 1}\n"
        "train: {epochs: 2, batch_size: 16, lr: 3.0e-3, max_length: 16, checkpoint_every: 4, log_every: 1}\n"
        "method: {name: magnitude, pattern: [head, neuron], sparsity: 0.5, scope: layer}\n"
        "bench: {enabled: false}\n"
    )
    return path


def _prune(recipe: Path, out: Path, *extra: str, fault: str | None = None, wait: bool = True):
    env = dict(ENV, PRUNEKIT_FAULT_AT=fault) if fault else ENV
    cmd = [sys.executable, "-m", "prunekit.cli", "prune", str(recipe), "--out", str(out), "--no-progress", *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(recipe) -> Path:
    """The uninterrupted run."""
    out = recipe.parent / "reference"
    proc = _prune(recipe, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _partial(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _checkpoints(out: Path, stage: str) -> list[str]:
    folder = _partial(out) / "checkpoints" / stage
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _assert_same_run(a: Path, b: Path) -> None:
    for sub in (".", "dense"):
        wa, wb = load_file(a / sub / "model.safetensors"), load_file(b / sub / "model.safetensors")
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), (sub, key)
    ma, mb = (json.loads((x / "prunekit.json").read_text()) for x in (a, b))
    assert ma["metrics"] == mb["metrics"] and ma["structure"] == mb["structure"]
    logs = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (a, b)]
    assert logs[0] == logs[1]  # same losses, learning rates and evaluations at every step, nothing logged twice
    assert not _partial(b).exists() and not (b / "checkpoints").exists()


def test_killed_at_many_points_resumes_to_the_same_weights(recipe, reference, tmp_path):
    out = tmp_path / "run"
    # (fault, what the process was doing when it died, checkpoints left after it) -- 6 kill points
    ft, pr = "finetune", "prune"
    chain = [
        ("checkpoint:2", "finetune: midway through writing its 2nd checkpoint (step 6)", {ft: [4]}),
        ("step:3", "finetune: right after optimizer step 7 (resumed from 4)", {ft: [4, 6]}),
        ("save:1", "finetune done: midway through writing dense/ (weights, no manifest)", {ft: [8, 12]}),
        ("checkpoint:3", "prune: midway through writing its checkpoint at step 8", {pr: [4, 6]}),
        ("step:3", "prune: right after optimizer step 9 (resumed from 6)", {pr: [6, 8]}),
        ("save:1", "prune done (fell back to step 6): midway through writing the final model", {pr: [8, 12]}),
    ]
    for i, (fault, where, left) in enumerate(chain):
        proc = _prune(recipe, out, *(["--resume"] if i else []), fault=fault)
        assert proc.returncode == -signal.SIGKILL, (where, proc.returncode, proc.stderr[-2000:])
        assert _partial(out).exists() and not out.exists(), where
        for stage, names in (left or {}).items():
            assert _checkpoints(out, stage) == [f"step-{n:07d}" for n in names], (where, _checkpoints(out, stage))
        if i == 2:
            assert not (_partial(out) / "dense" / "prunekit.json").exists()  # a half-written folder has no manifest
        if i == 4:  # damage the newest prune checkpoint: the next resume falls back to step 6 with a warning
            with open(_partial(out) / "checkpoints" / "prune" / "step-0000008" / "model.safetensors", "r+b") as fh:
                fh.seek(300)
                fh.write(b"\x00garbage\x00")
        if i == 5:
            warnings = [x for x in proc.stderr.splitlines() if x.startswith("warning:")]
            assert warnings and "skipping checkpoint step-0000008" in warnings[0], proc.stderr[-2000:]
            assert "falling back to the previous one" in warnings[0]
            assert "Traceback" not in proc.stderr
    proc = _prune(recipe, out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(reference, out)


def test_resume_of_a_finished_run_is_refused(recipe, reference):
    proc = _prune(recipe, reference, "--resume")
    assert proc.returncode == 2 and "exists" in proc.stderr and "Traceback" not in proc.stderr


def _log_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


@pytest.mark.slow
def test_killed_at_random_moments_resumes_to_the_same_weights(recipe, reference, tmp_path):
    """kill -9 from outside at random points of the training (seeded, so a failure can be replayed): each process
    is killed once the run's log reaches a random line, until the run finishes."""
    rng = random.Random(int(os.environ.get("PRUNEKIT_FAULT_SEED", "20240601")))
    out = tmp_path / "run"
    log = _partial(out) / "metrics.jsonl"
    total = _log_lines(reference / "metrics.jsonl")
    kills = []
    for _ in range(8):
        if out.exists():  # killed after the rename, while printing the summary: the run is complete
            break
        start = _log_lines(log)
        target = rng.randint(start + 1, total) if start < total and len(kills) < 5 else None
        proc = _prune(recipe, out, *(["--resume"] if _partial(out).exists() else []), wait=False)
        while target is not None and proc.poll() is None and _log_lines(log) < target:
            time.sleep(0.02)
        if target is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills.append((target, _log_lines(log), {s: _checkpoints(out, s) for s in ("finetune", "prune")}))
        proc.wait(timeout=600)
        stderr = proc.stderr.read()
        proc.stderr.close()
        assert proc.returncode in (0, -signal.SIGKILL), stderr[-3000:]
    for target, lines, state in kills:
        print(f"kill -9 at log line {lines} (aimed at {target} of {total}): checkpoints then {state}")
    assert len(kills) >= 3
    _assert_same_run(reference, out)
