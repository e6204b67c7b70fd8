"""The run directory: how every command writes one, in one place.

Two forms. `staged(out)` for a folder written in one go (compact, extract, save): a hidden `.NAME.tmp-PID` sibling,
renamed into place at the end, removed on failure. `resumable(out, recipe)` for runs that train (prune, finetune,
demo, search): a hidden `.NAME.partial` sibling holding the recipe and the checkpoints, kept when the run is
interrupted or has progress worth resuming, published by `publish(work, out)` (an atomic rename).

Every command that writes a run (prune, finetune, demo, search, extract, compact, save) goes through
`claim(out, ...)`: OUT must not be, or hold, anything the user has that prunekit did not write, and an
exclusive lock (`.NAME.lock` beside OUT, holding the owner's pid) keeps a second prunekit process out until
the first one ends. The lock is an `flock`, so a killed owner never leaves a stale lock behind; a lock file
left by a dead process is simply taken over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from prunekit.core.errors import DISK_FULL_FIX, PrunekitError, UsageError, is_disk_full

MANIFEST = "prunekit.json"  # a run directory (prune, finetune, compact, extract, save)
SEARCH_MARKER = "pareto.json"  # a search directory (`prunekit search`)
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp-(?P<pid>\d+)|partial\.tmp-(?P<ppid>\d+))$")


def is_prunekit_run(path: Path) -> bool:
    """A folder prunekit wrote and finished: it holds a run manifest or a search's Pareto file."""
    return path.is_dir() and ((path / MANIFEST).is_file() or (path / SEARCH_MARKER).is_file())


def partial_dir(out: Path) -> Path:
    """Where a run is built before it is renamed to OUT (kept after a kill, for --resume)."""
    return out.parent / f".{out.name}.partial"


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def prepare_partial(out: Path, recipe: dict, *, overwrite: bool, resume: bool) -> Path:
    """The partial folder a run (or search) is built in, called with OUT's lock held. Fresh: made whole with the
    resolved `recipe` in recipe.json, then renamed, so a kill leaves no half folder; an interrupted one is kept
    unless `overwrite`. `resume`: the interrupted one, which must have been started with the same recipe."""
    work = partial_dir(out)
    if resume:
        if not work.exists():
            raise UsageError(
                f"nothing to resume at '{out}': no interrupted run ({work.name}); start it without --resume"
            )
        try:
            saved = json.loads((work / "recipe.json").read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"the interrupted run {work} is damaged (its recipe.json is unreadable): pass --overwrite to restart"
            ) from exc
        if saved != recipe:
            raise UsageError(f"the recipe differs from the interrupted run's ({work / 'recipe.json'}): resume with it")
        remove_temp_files(work)  # half-written files of the save the kill interrupted
        return work
    if work.exists():
        if not overwrite:
            raise UsageError(
                f"an interrupted run of '{out}' exists ({work}): pass --resume to continue it or --overwrite to restart"
            )
        shutil.rmtree(work)
    tmp = out.parent / f"{work.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
    os.replace(tmp, work)
    return work


def recipe_inputs(recipe) -> list[str]:
    """The paths a recipe's run reads (data file or folder, model and teacher folders) that exist here."""
    paths = [recipe.data.dataset, recipe.data.data_dir, recipe.model]
    if getattr(recipe, "distill", None) is not None:
        paths.append(recipe.distill.teacher)
    return [p for p in paths if p and p != "dense" and Path(p).expanduser().exists()]


def check_target(out: Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse an OUT whose replacement would lose a user's files, before any work is done.

    OUT may not be the current folder or one above it, nor a folder holding one of the run's `inputs` (recipe,
    data file, source model). An existing OUT is replaced only with `overwrite` and only when prunekit wrote it."""
    resolved = out.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UsageError(f"output directory '{out}' is the current folder or holds it: give a new folder for the run")
    for item in inputs:
        if not item:
            continue
        path = Path(item).expanduser()
        if not path.exists():
            continue
        path = path.resolve()
        if path == resolved or resolved in path.parents:
            raise UsageError(
                f"output directory '{out}' holds '{item}', an input of this run: give a new folder for the run"
            )
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise UsageError(f"output directory '{out}' exists: choose another path or pass --overwrite")
    if out.is_symlink() or not out.is_dir():
        raise UsageError(f"'{out}' exists and is not a folder: --overwrite only replaces a prunekit run directory")
    if not is_prunekit_run(out):
        raise UsageError(
            f"'{out}' is not a prunekit run directory (no {MANIFEST}): --overwrite only replaces a run prunekit "
            "wrote; choose another path"
        )
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"cannot write to '{out.parent}': choose an output folder you can write to")


def check_writable(out: Path) -> None:
    """The folder OUT goes into can be created and written (tried, not guessed from permission bits: root may
    write anywhere but /proc or a read-only mount): checked before any model is loaded."""
    parent = out.expanduser().absolute().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise UsageError(f"cannot create '{out}': '{existing or parent}' is not a folder")
    try:
        Path(tempfile.mkdtemp(prefix=".prunekit-probe-", dir=existing)).rmdir()
    except OSError as exc:
        raise UsageError(
            f"cannot write to '{existing}' ({exc.strerror or exc}): choose an output folder you can write to"
        ) from None


def remove_run(out: Path) -> None:
    """Delete a finished run that is being replaced (checked by `check_target` first)."""
    if is_prunekit_run(out):
        shutil.rmtree(out)
    elif out.exists():
        raise UsageError(f"'{out}' is not a prunekit run directory: not replacing it")


def remove_leftovers(out: Path) -> list[Path]:
    """Temporary siblings of OUT left by a killed prunekit (`.NAME.tmp-PID`, `.NAME.partial.tmp-PID`) whose
    process is gone; called with OUT's lock held, so no live writer owns them."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in out.parent.iterdir():
        m = _LEFTOVER.match(path.name)
        if not m or m["name"] != out.name:
            continue
        pid = int(m["pid"] or m["ppid"])
        if pid != os.getpid() and _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def remove_temp_files(folder: Path) -> None:
    """Half-written files of a killed save inside a partial run (`.NAME.tmp`, mkstemp's `tmpXXXX`)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and (path.name.endswith(".tmp") or re.fullmatch(r"\.?tmp[a-z0-9_]{6,}(\..*)?", path.name)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: set[Path] = set()  # locks this process holds (a nested claim of the same OUT is a no-op)


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold OUT's exclusive lock; a second prunekit process writing the same OUT is refused with one line."""
    path = lock_path(out.expanduser().absolute())
    if path in _HELD:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            owner = _read_pid(path)
            who = f"prunekit process {owner}" if owner else "another prunekit process"
            raise UsageError(
                f"'{out}' is being written by {who} (lock {path}): wait for it to finish or stop it, "
                "or write to another folder"
            ) from None
        try:  # the file we locked may have been removed by its previous owner on release: lock the current one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _HELD.add(path)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        _HELD.discard(path)
        with suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextmanager
def claim(out: str | Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Check OUT (see `check_target`), take its lock, clear a killed writer's leftovers; yields OUT as a Path."""
    out = Path(out)
    check_writable(out)
    check_target(out, overwrite=overwrite, inputs=inputs)
    with locked(out):
        check_target(out, overwrite=overwrite, inputs=inputs)  # again: another process may have finished meanwhile
        remove_leftovers(out)
        yield out


@contextmanager
def staged(out_dir: str | Path, overwrite: bool = False, inputs: Iterable[str | Path | None] = ()):
    """Yield a temporary sibling of `out_dir`; on success rename it into place, on failure remove it. OUT is
    claimed first (`claim`: only a prunekit run is replaced, one writer at a time, a killed writer's
    leftovers removed)."""
    with claim(out_dir, overwrite=overwrite, inputs=inputs) as out:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            remove_run(out)
            os.replace(tmp, out)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, KeyboardInterrupt):
                exc.add_note(f"nothing was written to '{out}'")
            if is_disk_full(exc):
                raise PrunekitError(f"no space left on the device while writing '{out}': {DISK_FULL_FIX}") from exc
            raise


@contextmanager
def resumable(
    out_dir: str | Path,
    recipe: dict,
    *,
    overwrite: bool,
    resume: bool,
    inputs: Iterable[str | Path | None] = (),
    has_progress: Callable[[Path], bool] = lambda work: False,
    what: str = "run",
) -> Iterator[tuple[Path, Path]]:
    """Claim OUT and yield (out, work): the partial folder, fresh or resumed. A run that fails leaves nothing behind
    unless it was resumed or `has_progress(work)`: then it is kept and the error says how to continue. A kill or
    Ctrl-C (not an Exception) always keeps it, for --resume. The caller publishes with `publish(work, out)`."""
    with claim(out_dir, overwrite=overwrite, inputs=inputs) as out:
        work = prepare_partial(out, recipe, overwrite=overwrite, resume=resume)
        try:
            yield out, work
        except Exception as exc:
            if not resume and not has_progress(work):
                shutil.rmtree(work, ignore_errors=True)
            elif work.exists():
                exc.add_note(f"the interrupted {what} is kept in {work}: fix the cause, then pass --resume")
            raise
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM (errors.Interrupted)
            if work.exists():
                exc.add_note(f"the partial {what} is kept in {work}: run the same command with --resume to continue it")
            raise


def publish(work: Path, out: Path, drop: Iterable[str] = ("checkpoints", "best")) -> None:
    """Move a finished partial folder into place: drop the training state (kept until the model is written, so a
    kill while writing it resumes) and temporary files, replace the previous run, rename."""
    for sub in drop:
        shutil.rmtree(work / sub, ignore_errors=True)
    remove_temp_files(work)
    remove_run(out)
    work.replace(out)


def check_task_given(run_dir: str | Path, task: str | None, data: str | None) -> None:
    """A run that records no task (a `compact` of a plain model) is evaluated only with --task and --data: said
    from the manifest's JSON alone, before the library loads (the CLI's first answer)."""
    try:
        recorded = json.loads((Path(run_dir) / MANIFEST).read_text()).get("task") or {}
    except (OSError, ValueError, AttributeError):
        return  # no readable manifest: loading the run says what is wrong
    if "kind" not in recorded and (task is None or data is None):
        raise UsageError(
            f"'{run_dir}' records no task (it was not trained by prunekit): give --task KIND and --data FILE, "
            f"e.g. --task classification --data reviews.csv"
        )
