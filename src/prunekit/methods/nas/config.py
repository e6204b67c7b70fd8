"""The recipe's `search:` section (stage 2 of `prunekit search`); stage 1 is the `method: {name: nas}` section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

OBJECTIVES = ("params", "flops", "latency")
INITIAL = ("full", "smallest", "midpoint")


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    searcher: str = "morea"  # random | local | nsga2 | morea
    objective: str = "params"  # the efficiency objective beside 1 - metric: params | flops | latency
    budget: int = Field(100, ge=1)  # distinct sub-networks evaluated, the initial design included
    seed: int = Field(0, ge=0)
    initial_design: list[str] = ["full", "smallest", "midpoint"]
    population: int | None = Field(None, ge=2)  # MO-REA 10, NSGA-II 20 when unset
    sample_size: int = Field(5, ge=1)  # MO-REA's tournament sample
    storage: str | None = None  # optuna storage URL (nsga2): processes with the same URL and study share one study
    study_name: str | None = None
    max_eval_examples: int | None = Field(None, ge=1)  # validation examples per candidate (the first ones)
    latency_batch: int = Field(1, ge=1)  # latency objective: batch size; sequence length, repeats: `bench`
    reference_point: list[float] = [1.0, 1.0]  # hypervolume, in normalised objectives (1 - metric, relative cost)
    baselines: list[str] = ["heads", "layers", "magnitude"]
    baseline_sizes: list[float] = [0.25, 0.5, 0.75]  # fraction removed
    supernet: str | None = None  # a previous search directory: reuse its trained super-network (skip stage 1)

    @field_validator("searcher")
    @classmethod
    def _searcher(cls, v: str) -> str:
        from prunekit.methods.nas.search import check_searcher

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
        from prunekit.methods.nas.baselines import check_baseline

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
