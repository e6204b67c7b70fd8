"""The recipe sections of NAS structural pruning: `method: {name: nas}` (`NASConfig`, stage 1: super-network
training) and `search:` (`SearchSpec`, stage 2: the multi-objective search)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prunekit.methods.base import MethodConfig
from prunekit.methods.nas.baselines import check_baseline
from prunekit.methods.nas.search import check_searcher
from prunekit.methods.nas.space import check_space_name

OBJECTIVES = ("params", "flops", "latency")
INITIAL = ("full", "smallest", "midpoint")
STRATEGIES = ("standard", "random", "random_linear", "sandwich", "kd", "full")


class NASConfig(MethodConfig):
    """Recipe section of `nas` (stage 1 of `prunekit search`): weight-sharing super-network training."""

    space: str = Field(
        "small",
        description="Search space: small (layers, heads, neurons shared by all layers) | medium (heads and neurons "
        "per layer) | layer (keep or drop each block) | large (every head and neuron); METHODS.md 4a.",
    )
    strategy: str = Field(
        "full",
        description="Super-network training: standard (full network only) | random (R random sub-networks) | "
        "random_linear | sandwich (full + R random + smallest) | kd (random ones distilled from the full one) | "
        "full (sandwich with in-place distillation).",
    )
    num_random: int | None = Field(
        None, ge=1, description="Random sub-networks per step (unset: 1 for random / random_linear, 2 for the others)."
    )
    temperature: float = Field(1.0, gt=0, description="Temperature T of the in-place distillation (T^2 * KL).")
    reorder: bool = Field(
        True,
        description="Sort heads and neurons by importance before prefix masking, so a prefix keeps the most "
        "important units.",
    )
    importance_examples: int = Field(
        256, ge=1, description="Training examples the importance scores (for reordering) are measured on."
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of the sub-network sampling (the sub-networks of a step are a function of seed and step).",
    )

    _space = field_validator("space")(check_space_name)

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"unknown training strategy '{v}': use one of {', '.join(STRATEGIES)}")
        return v

    @property
    def random_count(self) -> int:
        if self.num_random is not None:
            return self.num_random
        return 1 if self.strategy in ("random", "random_linear") else 2


class SearchSpec(BaseModel):
    """The recipe's `search:` section: stage 2 of `prunekit search`, the multi-objective search over the trained
    super-network's sub-networks (METHODS.md 4c)."""

    model_config = ConfigDict(extra="forbid")

    searcher: str = Field("morea", description="Search algorithm: random | local | nsga2 | morea (MO-REA).")
    objective: str = Field(
        "params",
        description="The efficiency objective beside 1 - metric: params | flops | latency (measured on the device).",
    )
    budget: int = Field(100, ge=1, description="Distinct sub-networks evaluated, the initial design included.")
    seed: int = Field(0, ge=0, description="Seed of the searcher's random draws.")
    initial_design: list[str] = Field(
        ["full", "smallest", "midpoint"],
        description="Sub-networks evaluated first: any of full, smallest, midpoint.",
    )
    population: int | None = Field(
        None, ge=2, description="Population size of MO-REA / NSGA-II (unset: MO-REA 10, NSGA-II 20)."
    )
    sample_size: int = Field(5, ge=1, description="MO-REA's tournament sample size.")
    storage: str | None = Field(
        None,
        description="optuna storage URL (nsga2): processes given the same URL and study name share one study.",
    )
    study_name: str | None = Field(None, description="optuna study name (nsga2; unset: a new study).")
    max_eval_examples: int | None = Field(
        None, ge=1, description="Validation examples each candidate is evaluated on (the first ones; unset: all)."
    )
    latency_batch: int = Field(
        1,
        ge=1,
        description="Latency objective: the batch size it is measured at (sequence length and repeats: `bench`).",
    )
    reference_point: list[float] = Field(
        [1.0, 1.0],
        description="Hypervolume reference point, in normalised objectives (1 - metric, cost relative to dense).",
    )
    baselines: list[str] = Field(
        ["heads", "layers", "magnitude"],
        description="One-shot baselines compared with the Pareto set: heads (head importance), layers (layer "
        "dropping), magnitude.",
    )
    baseline_sizes: list[float] = Field(
        [0.25, 0.5, 0.75], description="Fractions removed at which each baseline is applied, each in (0, 1)."
    )
    supernet: str | None = Field(
        None, description="A previous search directory whose trained super-network is reused (stage 1 skipped)."
    )

    @field_validator("searcher")
    @classmethod
    def _searcher(cls, v: str) -> str:
        return check_searcher(v)

    @field_validator("objective")
    @classmethod
    def _objective(cls, v: str) -> str:
        if v not in OBJECTIVES:
            raise ValueError(f"unknown objective '{v}': use one of {', '.join(OBJECTIVES)}")
        return v

    @field_validator("initial_design")
    @classmethod
    def _initial(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in INITIAL]
        if bad:
            raise ValueError(f"unknown initial design point '{bad[0]}': use any of {', '.join(INITIAL)}")
        return v

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, v: list[str]) -> list[str]:
        return [check_baseline(x) for x in v]

    @field_validator("baseline_sizes")
    @classmethod
    def _sizes(cls, v: list[float]) -> list[float]:
        if any(not 0 < x < 1 for x in v):
            raise ValueError("baseline sizes are fractions removed, strictly between 0 and 1")
        return v

    @field_validator("reference_point")
    @classmethod
    def _reference(cls, v: list[float]) -> list[float]:
        if len(v) != 2:
            raise ValueError("the reference point has two values: (1 - metric, relative cost)")
        return v
