"""Never lose a user's files, never report success for a run that did not happen (issue 29).

Each test is one case of the issue, run through the real CLI (`python -m prunekit.cli`) the way a user meets it:
--overwrite of a folder prunekit did not write, Ctrl-C / SIGTERM, two writers of one run directory, `--json` on
stdout, half-written leftovers after kill -9, raw exceptions instead of one line, exit codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunekit.core.errors import UsageError
from prunekit.runs.directory import check_target, claim, lock_path, locked, partial_dir, remove_leftovers
from train_fixtures import sentiment_csv, tiny_bert_dir

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    cmd = [sys.executable, "-m", "prunekit.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env or ENV, timeout=timeout)


def one_line_error(proc) -> str:
    lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
    assert lines and lines[-1].startswith("error:"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[-1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safety")
    model = tiny_bert_dir(root)
    data = sentiment_csv(root, n=120)
    recipe = root / "tiny.yaml"
    recipe.write_text(
        f"model: {model}\n"
        f"data: {{dataset: {data}, task: classification, columns: {{text: review, label: verdict}}}}\n"
        "train: {epochs: 2, batch_size: 16, lr: 3.0e-3, max_length: 16, checkpoint_every: 2, log_every: 1}\n"
        "method: {name: magnitude, pattern: [head, neuron], sparsity: 0.5, scope: layer}\n"
        "bench: {enabled: false}\n"
    )
    return {"root": root, "model": model, "data": data, "recipe": recipe}


# --- 1. --overwrite replaces only a prunekit run ---------------------------------------------------------------


def test_overwrite_refuses_the_current_folder(tmp_path, setup):
    user = tmp_path / "s"
    user.mkdir()
    (user / "important.txt").write_text("a")
    proc = cli("compact", str(setup["model"]), ".", "--num-labels", "2", "-p", "heads=0.5", "--overwrite", cwd=user)
    assert proc.returncode == 2
    assert "current folder" in one_line_error(proc)
    assert (user / "important.txt").read_text() == "a"


def test_overwrite_refuses_a_folder_prunekit_did_not_write(tmp_path, setup):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    proc = cli("compact", str(setup["model"]), str(user), "--num-labels", "2", "--overwrite")
    assert proc.returncode == 2 and "not a prunekit run directory" in one_line_error(proc)
    assert (user / "notes.txt").read_text() == "keep me"
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    proc = cli("compact", str(setup["model"]), str(afile), "--num-labels", "2", "--overwrite")
    assert proc.returncode == 2 and "not a folder" in one_line_error(proc)
    assert afile.read_text() == "x"


def test_overwrite_refuses_a_folder_holding_the_runs_inputs(setup):
    """OUT = the folder with the recipe, the data file and the model: refused before anything is read or removed."""
    before = sorted(p.name for p in setup["root"].iterdir())
    proc = cli("prune", str(setup["recipe"]), "--out", str(setup["root"]), "--overwrite", "--no-progress")
    assert proc.returncode == 2 and "an input of this run" in one_line_error(proc)
    assert sorted(p.name for p in setup["root"].iterdir()) == before


def test_check_target_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="current folder"):
        check_target(tmp_path.parent, overwrite=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "prunekit.json").write_text("{}")
    check_target(run, overwrite=True)  # a prunekit run may be replaced
    with pytest.raises(UsageError, match="pass --overwrite"):
        check_target(run, overwrite=False)
    (run / "data.csv").write_text("text,label\n")
    with pytest.raises(UsageError, match="input of this run"):
        check_target(run, overwrite=True, inputs=[run / "data.csv"])


# --- 2. Ctrl-C / SIGTERM exit non-zero and say where the partial run is -------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [("INT", 130), ("TERM", 143)])
def test_interrupt_exits_non_zero_and_says_how_to_resume(tmp_path, setup, sig, code):
    out = tmp_path / "run"
    env = dict(ENV, PRUNEKIT_FAULT_AT=f"step:3:{sig}")
    proc = cli("prune", str(setup["recipe"]), "--out", str(out), "--no-progress", env=env)
    assert proc.returncode == code, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"SIG{sig}" in last and "--resume" in last and f".{out.name}.partial" in last
    assert not out.exists() and (tmp_path / f".{out.name}.partial").is_dir()
    resumed = cli("prune", str(setup["recipe"]), "--out", str(out), "--no-progress", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "prunekit.json").is_file()
    assert "prune: resuming at step 2 of 12" in resumed.stderr  # the checkpoint before the stop (every 2 steps)
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "single_label_classification"  # a resumed run's config lacked it
    assert (out / "model.safetensors").stat().st_mode & 0o777 == (out / "config.json").stat().st_mode & 0o777


def test_interrupt_of_a_background_process_is_not_ignored(tmp_path, setup):
    """A shell starts background jobs with SIGINT ignored: `kill -INT` must still stop the run (it used to finish
    and exit 0)."""
    out = tmp_path / "bg"
    started = partial_dir(out)  # made once the run has claimed OUT, after the CLI set up its signal handling
    cmd = f"{sys.executable} -m prunekit.cli prune {setup['recipe']} --out {out} --no-progress & pid=$!; "
    cmd += f"while [ ! -e {started} ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done; kill -INT $pid; wait $pid"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert not out.exists()


# --- 3. one writer per run directory ----------------------------------------------------------------------------


def test_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path, setup):
    out = tmp_path / "run"
    with locked(out):
        proc = cli("prune", str(setup["recipe"]), "--out", str(out), "--overwrite", "--no-progress")
        assert proc.returncode == 2
        line = one_line_error(proc)
        assert "being written by" in line and str(os.getpid()) in line
        proc = cli("compact", str(setup["model"]), str(out), "--num-labels", "2")
        assert proc.returncode == 2 and "being written by" in one_line_error(proc)
    assert not lock_path(out).exists()  # released and removed


def test_a_dead_owners_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    lock_path(out).write_text("999999\n")  # left behind by a process that no longer exists (flock died with it)
    with claim(out, overwrite=False):
        assert lock_path(out).read_text().strip() == str(os.getpid())


def test_nested_claims_of_one_out_in_one_process(tmp_path):
    out = tmp_path / "run"
    with locked(out), locked(out):  # compact claims OUT, then save claims it again
        pass


# --- 6. --json is one JSON document on stdout ------------------------------------------------------------------


def test_json_output_is_one_document_even_with_progress_bars(tmp_path, setup):
    out = tmp_path / "run"
    proc = cli("prune", str(setup["recipe"]), "--out", str(out), "--json", "--progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # the whole of stdout
    assert summary["out_dir"] == str(out)


# --- 7. no half-written leftovers after kill -9 -------------------------------------------------------------------


def test_killed_final_save_leaves_no_temp_file_in_the_resumed_run(tmp_path, setup):
    out = tmp_path / "run"
    killed = cli(
        "prune", str(setup["recipe"]), "--out", str(out), "--no-progress", env=dict(ENV, PRUNEKIT_FAULT_AT="save:1")
    )
    assert killed.returncode != 0
    partial = tmp_path / f".{out.name}.partial"
    (partial / "tmpab12cd34").write_bytes(b"half")  # what a writer killed mid-file leaves (mkstemp's name)
    (partial / ".prunekit.json.tmp").write_text("{")
    resumed = cli("prune", str(setup["recipe"]), "--out", str(out), "--no-progress", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if "tmp" in n], names


def test_killed_compact_leaves_no_orphan_after_a_rerun(tmp_path, setup):
    out = tmp_path / "small"
    args = ("compact", str(setup["model"]), str(out), "--num-labels", "2", "-p", "heads=0.5")
    killed = cli(*args, env=dict(ENV, PRUNEKIT_FAULT_AT="save:1"))
    assert killed.returncode != 0
    orphans = [p for p in tmp_path.iterdir() if p.name.startswith(".small.tmp-")]
    assert orphans  # the kill left its staging folder
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".small")) == []
    assert (out / "prunekit.json").is_file()


def test_remove_leftovers_keeps_a_live_writers_folder(tmp_path):
    out = tmp_path / "run"
    live = tmp_path / f".run.tmp-{os.getppid()}"
    dead = tmp_path / ".run.tmp-999999"
    other = tmp_path / ".other.tmp-999999"
    for p in (live, dead, other):
        p.mkdir()
    assert remove_leftovers(out) == [dead]
    assert live.exists() and other.exists()


# --- 8 / 11. one line and exit 2 for bad arguments, checked before any model is loaded -------------------------


@pytest.fixture(scope="module")
def small_run(setup) -> Path:
    out = setup["root"] / "small-run"
    proc = cli("compact", str(setup["model"]), str(out), "--num-labels", "2", "-p", "heads=0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("bench", "{run}", "--batch", "0"), "--batch 0"),
        (("bench", "{run}", "--threads", "0"), "--threads 0"),
        (("bench", "{run}", "--device", "tpu"), "--device 'tpu'"),
        (("evaluate", "{run}", "--batch-size", "0"), "--batch-size 0"),
        (("evaluate", "{run}", "--split", "train"), "--split 'train'"),
        (("evaluate", "{run}"), "--task KIND and --data FILE"),
        (("compact", "{model}", "/proc/prunekit-x", "--num-labels", "2"), "cannot write to"),
        (("frobnicate",), "No such command"),
        (("models", "--frobnicate"), "No such option"),
        (("compare", "{run}", "--at", "0"), "--at 0"),
    ],
)
def test_bad_arguments_are_one_line_with_exit_2_and_fast(setup, small_run, args, expected):
    args = [a.format(run=small_run, model=setup["model"]) for a in args]
    start = time.perf_counter()
    proc = cli(*args)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in one_line_error(proc)
    assert elapsed < 6.0  # no model load before the arguments are checked (a load took 7-9 s)


def test_bench_on_cuda_without_a_gpu_is_one_line(small_run):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the message does not apply")  # CPU CI always runs it
    proc = cli("bench", str(small_run), "--device", "cuda")
    assert proc.returncode == 2 and "no CUDA GPU" in one_line_error(proc)


def test_evaluate_a_compacted_run_with_a_task(tmp_path, setup, small_run):
    proc = cli("evaluate", str(small_run), "--task", "classification", "--data", str(setup["data"]),
               "--column", "text=review", "--column", "label=verdict", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    [row] = json.loads(proc.stdout)
    assert row["examples"] == 120 and 0 <= row["accuracy"] <= 1


def test_report_and_compare_refuse_corrupt_weights(tmp_path, small_run):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(small_run, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    for args in (("report", str(broken)), ("compare", str(small_run), str(broken))):
        proc = cli(*args)
        assert proc.returncode == 1 and "corrupt or truncated" in one_line_error(proc)


def test_help_answers_fast():
    start = time.perf_counter()
    proc = cli("prune", "--help")
    assert proc.returncode == 0 and "--overwrite" in proc.stdout
    assert time.perf_counter() - start < 2.0  # no torch / transformers import for --help


# --- 10 / 11. data and recipe limits reach the run ------------------------------------------------------------


def test_max_length_beyond_the_position_embeddings_is_refused_before_training(tmp_path, setup):
    proc = cli("prune", str(setup["recipe"]), "--out", str(tmp_path / "r"), "--set", "train.max_length=100000")
    assert proc.returncode == 2 and "max_length" in one_line_error(proc)
    assert not (tmp_path / "r").exists() and not (tmp_path / ".r.partial").exists()


def test_dropped_unlabeled_rows_are_counted_in_the_manifest(tmp_path, setup):
    rows = setup["data"].read_text().splitlines()
    for i in (5, 17, 40):  # three rows lose their label
        rows[i] = rows[i].rsplit(",", 1)[0] + ","
    data = tmp_path / "holes.csv"
    data.write_text("\n".join(rows) + "\n")
    args = (
        "prune",
        str(setup["recipe"]),
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--set",
        f"data.dataset={data}",
    )
    refused = cli(*args)
    assert refused.returncode == 2 and "3 of 120 rows have no label" in one_line_error(refused)
    proc = cli(*args, "--set", "data.drop_invalid=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "r" / "prunekit.json").read_text())
    assert manifest["split"]["dropped_rows"] == 3 and sum(manifest["split"]["sizes"].values()) == 117
    evaluated = cli("evaluate", str(tmp_path / "r"), "--json")  # re-makes the same split, dropping the same rows
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)[0]["examples"] == manifest["split"]["sizes"]["test"]


def test_a_resumed_run_keeps_the_time_its_dense_stage_took(tmp_path, setup):
    recipe = tmp_path / "ft.yaml"
    text = setup["recipe"].read_text()
    recipe.write_text(text + "finetune: {epochs: 1, batch_size: 16, lr: 1.0e-2, max_length: 16, checkpoint_every: 2}\n")
    out = tmp_path / "r"
    killed = cli("prune", str(recipe), "--out", str(out), "--no-progress", env=dict(ENV, PRUNEKIT_FAULT_AT="step:9"))
    assert killed.returncode != 0 and (tmp_path / ".r.partial" / "dense" / "prunekit.json").is_file()
    resumed = cli("prune", str(recipe), "--out", str(out), "--no-progress", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    timings = json.loads((out / "prunekit.json").read_text())["timings"]
    assert timings["finetune_s"] > 0 and timings["prune_s"] > 0
