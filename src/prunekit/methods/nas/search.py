"""Stage 2 searchers (METHODS.md 4c): multi-objective search over a space's configurations, no training.

Every searcher starts with the initial design (full, smallest, midpoint by default), spends `budget` distinct
evaluations in all, and returns every evaluation; the Pareto set is taken from them afterwards.

    random  uniform samples
    local   keep the Pareto front; propose a neighbour (one coordinate changed) of a random front member
    nsga2   optuna's NSGAIISampler; with a storage URL several processes share one study (and one budget)
    morea   regularised evolution, multi-objective: a FIFO population (10); the parent is a random member of
            the best non-domination rank among a random sample (5) of it; the child is a neighbour
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from prunekit.core.errors import UsageError
from prunekit.methods.nas.pareto import hypervolume, nondominated_ranks, pareto_mask
from prunekit.methods.nas.space import Config, SearchSpace

SEARCHERS = ("random", "local", "nsga2", "morea")


@dataclass
class Evaluation:
    config: Config
    objectives: tuple[float, ...]  # normalised, minimised: (1 - metric, relative cost)
    info: dict[str, Any] = field(default_factory=dict)  # validation metric, raw cost, structure


class Problem:
    """The objective function with a cache per configuration (and the order of first evaluation)."""

    def __init__(self, fn: Callable[[Config], Evaluation], on_new: Callable[[Evaluation], None] | None = None):
        self.fn, self.on_new = fn, on_new
        self.cache: dict[Config, Evaluation] = {}
        self.history: list[Evaluation] = []

    def __call__(self, config: Config) -> Evaluation:
        config = tuple(int(x) for x in config)
        if config not in self.cache:
            ev = self.fn(config)
            self.cache[config] = ev
            self.history.append(ev)
            if self.on_new is not None:
                self.on_new(ev)
        return self.cache[config]

    def seen(self, config: Config) -> bool:
        return tuple(config) in self.cache


def front(evals: list[Evaluation]) -> list[Evaluation]:
    if not evals:
        return []
    mask = pareto_mask([e.objectives for e in evals])
    return sorted((e for e, m in zip(evals, mask, strict=True) if m), key=lambda e: e.objectives[::-1])


def check_searcher(name: str) -> str:
    if name not in SEARCHERS:
        raise ValueError(f"unknown searcher '{name}': use one of {', '.join(SEARCHERS)}")
    return name


def _fresh(space: SearchSpace, problem: Problem, propose: Callable[[], Config], rng, tries: int = 50) -> Config:
    """A proposal not evaluated yet (falls back to uniform samples, then to anything)."""
    for _ in range(tries):
        c = propose()
        if not problem.seen(c):
            return c
    for _ in range(tries):
        c = space.sample(rng)
        if not problem.seen(c):
            return c
    return c


def _initial(problem: Problem, initial: list[Config], budget: int) -> None:
    for c in initial[:budget]:
        problem(c)


def random_search(space, problem, budget, rng, initial, **_) -> None:
    _initial(problem, initial, budget)
    while len(problem.history) < budget and len(problem.history) < _size(space):
        problem(_fresh(space, problem, lambda: space.sample(rng), rng))


def local_search(space, problem, budget, rng, initial, **_) -> None:
    _initial(problem, initial, budget)
    while len(problem.history) < budget and len(problem.history) < _size(space):
        members = front(problem.history)

        def pick(members: list[Evaluation] = members) -> Config:
            return space.neighbour(members[int(rng.integers(len(members)))].config, rng)

        problem(_fresh(space, problem, pick, rng))


def morea(space, problem, budget, rng, initial, population: int | None = None, sample_size: int = 5, **_) -> None:
    size = population or 10
    pop: deque[Evaluation] = deque(maxlen=size)
    for c in initial[:budget]:
        pop.append(problem(c))
    while len(pop) < size and len(problem.history) < min(budget, _size(space)):
        pop.append(problem(_fresh(space, problem, lambda: space.sample(rng), rng)))
    while len(problem.history) < min(budget, _size(space)):

        def child() -> Config:
            idx = rng.choice(len(pop), size=min(sample_size, len(pop)), replace=False)
            ranks = nondominated_ranks([pop[i].objectives for i in idx])
            best = [int(i) for i, r in zip(idx, ranks, strict=True) if r == 0]
            return space.neighbour(pop[best[int(rng.integers(len(best)))]].config, rng)

        pop.append(problem(_fresh(space, problem, child, rng)))  # the oldest member leaves


def nsga2(
    space,
    problem,
    budget,
    rng,
    initial,
    population: int | None = None,
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    **_,
) -> list[Evaluation]:
    """optuna NSGA-II; returns the study's evaluations (other processes' too, when the study is shared)."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(population_size=population or 20, seed=seed)
    try:
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            study_name=study_name,
            load_if_exists=storage is not None,
            directions=["minimize", "minimize"],
        )
    except (ValueError, ImportError) as exc:
        raise UsageError(f"search.storage '{storage}': {exc}") from exc
    for c in initial:
        study.enqueue_trial(dict(zip(space.names, c, strict=True)), skip_if_exists=True)

    def objective(trial) -> tuple[float, float]:
        config = tuple(
            trial.suggest_int(n, int(lo), int(hi))
            for n, lo, hi in zip(space.names, space.lows, space.highs, strict=True)
        )
        ev = problem(config)
        trial.set_user_attr("info", ev.info)
        return tuple(ev.objectives)

    done = lambda: len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))  # noqa: E731
    study.optimize(
        objective,
        n_trials=max(0, budget - done()),
        callbacks=[MaxTrialsCallback(budget, states=(TrialState.COMPLETE,))],
    )
    out = {e.config: e for e in problem.history}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        config = tuple(int(t.params[n]) for n in space.names)
        if config not in out:
            out[config] = Evaluation(config, tuple(t.values), dict(t.user_attrs.get("info", {})))
    return list(out.values())


def _size(space: SearchSpace) -> float:
    """How many configurations the space has (to stop a budget larger than the space)."""
    return float(np.prod((space.highs - space.lows + 1).astype(float)))


RUNNERS = {"random": random_search, "local": local_search, "nsga2": nsga2, "morea": morea}


def multi_objective_search(
    searcher: str,
    space: SearchSpace,
    problem: Problem,
    *,
    budget: int,
    seed: int,
    initial: list[Config],
    **options: Any,
) -> list[Evaluation]:
    """Every evaluation the searcher made (for nsga2 with shared storage: the whole study's)."""
    if searcher not in RUNNERS:
        raise UsageError(f"unknown searcher '{searcher}': use one of {', '.join(SEARCHERS)}")
    if searcher == "nsga2" and len(space) > 2000:
        warnings.warn(
            f"nsga2 over {len(space)} coordinates ('{space.name}' space): optuna suggests each one per trial, "
            "which is slow; morea, local or random search handle large spaces faster",
            stacklevel=2,
        )
    rng = np.random.default_rng(seed)
    result = RUNNERS[searcher](space, problem, budget, rng, initial, seed=seed, **options)
    return result if result is not None else list(problem.history)


class FrontProgress:
    """A rich progress bar over the budget showing the current front size and hypervolume."""

    def __init__(self, budget: int, reference: tuple[float, ...], enabled: bool = True) -> None:
        self.reference = reference
        self.evals: list[Evaluation] = []
        self.progress = Progress(
            TextColumn("[bold]search[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            disable=not enabled,
            console=Console(stderr=True),  # stdout is for results (`--json`)
        )
        self.task = self.progress.add_task("", total=budget)

    def __enter__(self) -> FrontProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def add(self, ev: Evaluation) -> None:
        self.evals.append(ev)
        f = front(self.evals)
        hv = hypervolume([e.objectives for e in f], self.reference)
        self.progress.update(self.task, advance=1, description=f"front {len(f)}  hypervolume {hv:.4f}")
