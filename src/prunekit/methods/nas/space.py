"""Search spaces of sub-networks (METHODS.md 4a): which heads, FFN neurons and layers a candidate keeps.

A configuration is a tuple of integers, one per coordinate of the space; every integer in [low, high] is valid,
so samplers and optuna need no repair step. Prefix coordinates keep "the first k" units of a layer: the units
are reordered by importance first (`prunekit.methods.nas.reorder`), so the first k are the most important ones.

Head units are KV groups: for multi-head attention a unit is one head; for grouped-query attention a unit is a
KV head with all its query heads, the only granularity that always compacts (a kept KV group must keep the same
number of query heads as every other kept group).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prunekit.core.errors import UsageError
from prunekit.masks import MaskSet
from prunekit.topology import Topology

Config = tuple[int, ...]


@dataclass(frozen=True)
class LayerShape:
    """What a block offers the search: head units (KV groups), query heads per unit, FFN neurons."""

    units: int
    group: int
    neurons: int


def layer_shapes(topo: Topology) -> list[LayerShape]:
    out = []
    for b in topo.blocks:
        a = b.attention
        units = a.num_kv_heads if a is not None and a.num_heads else 0
        out.append(LayerShape(units, a.group_size if units else 1, b.ffn.width if b.ffn is not None else 0))
    return out


@dataclass
class LayerChoice:
    """One block of a sub-network: kept or dropped whole, and its kept head units and neurons (True = kept),
    in the (importance-sorted) order of the super-network."""

    keep: bool
    units: torch.Tensor
    neurons: torch.Tensor


def _prefix(n: int, k: int) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[: max(0, min(k, n))] = True
    return m


class SearchSpace:
    """Integer box [lows, highs] with names; subclasses say what a configuration keeps."""

    name = "base"

    def __init__(self, shapes: list[LayerShape]) -> None:
        self.shapes = shapes
        self.names: list[str] = []
        self.lows: np.ndarray = np.zeros(0, dtype=np.int64)
        self.highs: np.ndarray = np.zeros(0, dtype=np.int64)

    @property
    def num_layers(self) -> int:
        return len(self.shapes)

    def __len__(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------ points

    def full(self) -> Config:
        return tuple(int(x) for x in self.highs)

    def smallest(self) -> Config:
        return tuple(int(x) for x in self.lows)

    def midpoint(self) -> Config:
        return tuple(int(x) for x in (self.lows + self.highs + 1) // 2)

    def initial(self, names: list[str]) -> list[Config]:
        points = {"full": self.full, "smallest": self.smallest, "midpoint": self.midpoint}
        out: list[Config] = []
        for n in names:
            c = points[n]()
            if c not in out:
                out.append(c)
        return out

    def contains(self, config: Config) -> bool:
        c = np.asarray(config)
        return (
            len(config) == len(self)
            and all(isinstance(x, int | np.integer) for x in config)
            and bool(((c >= self.lows) & (c <= self.highs)).all())
        )

    def check(self, config: Config) -> Config:
        if not self.contains(config):
            raise UsageError(
                f"configuration of {len(config)} values is not in the '{self.name}' search space "
                f"({len(self)} integers within {self.lows.tolist()[:6]}..{self.highs.tolist()[:6]})"
            )
        return tuple(int(x) for x in config)

    def sample(self, rng: np.random.Generator) -> Config:
        return tuple(int(x) for x in rng.integers(self.lows, self.highs + 1))

    def neighbour(self, config: Config, rng: np.random.Generator) -> Config:
        """The configuration with one coordinate set to another of its values (local search, mutation)."""
        free = np.nonzero(self.highs > self.lows)[0]
        if free.size == 0:
            return tuple(config)
        i = int(rng.choice(free))
        values = [v for v in range(int(self.lows[i]), int(self.highs[i]) + 1) if v != config[i]]
        out = list(config)
        out[i] = int(rng.choice(values))
        return tuple(out)

    # ------------------------------------------------------------ meaning

    def choices(self, config: Config) -> list[LayerChoice]:
        raise NotImplementedError

    def masks(self, config: Config) -> MaskSet:
        """The configuration as prunekit masks over the super-network's (reordered) units."""
        masks = MaskSet()
        for i, (shape, ch) in enumerate(zip(self.shapes, self.choices(self.check(config)), strict=True)):
            lm = masks.layer(i)
            if not ch.keep:
                lm.drop_attention = shape.units > 0
                lm.drop_ffn = shape.neurons > 0
                continue
            if shape.units:
                lm.heads = ch.units.repeat_interleave(shape.group)
            if shape.neurons:
                lm.neurons = ch.neurons.clone()
        return masks

    def summary(self, config: Config) -> dict[str, list[int]]:
        """Readable structure: query heads and neurons kept per layer (0 for a dropped layer)."""
        heads, neurons = [], []
        for shape, ch in zip(self.shapes, self.choices(config), strict=True):
            heads.append(int(ch.units.sum()) * shape.group if ch.keep else 0)
            neurons.append(int(ch.neurons.sum()) if ch.keep else 0)
        return {"heads": heads, "neurons": neurons}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "dimensions": len(self),
            "names": self.names[:8] + (["..."] if len(self) > 8 else []),
        }


class SmallSpace(SearchSpace):
    """3 numbers shared by all layers: layers kept (a prefix), head units and neurons per layer."""

    name = "small"

    def __init__(self, shapes: list[LayerShape]) -> None:
        super().__init__(shapes)
        units = max(s.units for s in shapes)
        neurons = max(s.neurons for s in shapes)
        self.names = ["layers", "heads", "neurons"]
        self.lows = np.array([1, min(1, units), min(1, neurons)])
        self.highs = np.array([len(shapes), units, neurons])

    def choices(self, config: Config) -> list[LayerChoice]:
        layers, heads, neurons = config
        return [
            LayerChoice(i < layers, _prefix(s.units, heads), _prefix(s.neurons, neurons))
            for i, s in enumerate(self.shapes)
        ]


class MediumSpace(SearchSpace):
    """Per layer: head units kept and neurons kept (2L numbers, each from 0)."""

    name = "medium"

    def __init__(self, shapes: list[LayerShape]) -> None:
        super().__init__(shapes)
        self.names = [f"heads.{i}" for i in range(len(shapes))] + [f"neurons.{i}" for i in range(len(shapes))]
        self.lows = np.zeros(2 * len(shapes), dtype=np.int64)
        self.highs = np.array([s.units for s in shapes] + [s.neurons for s in shapes])

    def choices(self, config: Config) -> list[LayerChoice]:
        n = len(self.shapes)
        return [
            LayerChoice(True, _prefix(s.units, config[i]), _prefix(s.neurons, config[n + i]))
            for i, s in enumerate(self.shapes)
        ]


class LayerSpace(SearchSpace):
    """Per layer: keep (1) or drop (0) the whole block."""

    name = "layer"

    def __init__(self, shapes: list[LayerShape]) -> None:
        super().__init__(shapes)
        self.names = [f"layer.{i}" for i in range(len(shapes))]
        self.lows = np.zeros(len(shapes), dtype=np.int64)
        self.highs = np.ones(len(shapes), dtype=np.int64)

    def midpoint(self) -> Config:
        """The first half of the layers (a binary coordinate has no middle value)."""
        half = (len(self.shapes) + 1) // 2
        return tuple(int(i < half) for i in range(len(self.shapes)))

    def choices(self, config: Config) -> list[LayerChoice]:
        return [
            LayerChoice(bool(config[i]), _prefix(s.units, s.units), _prefix(s.neurons, s.neurons))
            for i, s in enumerate(self.shapes)
        ]


class LargeSpace(SearchSpace):
    """Every head unit and every neuron on its own (binary): sum over layers of units + neurons coordinates."""

    name = "large"

    def __init__(self, shapes: list[LayerShape]) -> None:
        super().__init__(shapes)
        self.names = [f"head.{i}.{j}" for i, s in enumerate(shapes) for j in range(s.units)]
        self.names += [f"neuron.{i}.{j}" for i, s in enumerate(shapes) for j in range(s.neurons)]
        self.lows = np.zeros(len(self.names), dtype=np.int64)
        self.highs = np.ones(len(self.names), dtype=np.int64)

    def midpoint(self) -> Config:
        """The more important half of every layer's units and neurons (their prefix)."""
        heads = [int(j < (s.units + 1) // 2) for s in self.shapes for j in range(s.units)]
        neurons = [int(j < (s.neurons + 1) // 2) for s in self.shapes for j in range(s.neurons)]
        return tuple(heads + neurons)

    def choices(self, config: Config) -> list[LayerChoice]:
        c = torch.tensor(config, dtype=torch.bool)
        out, h, n = [], 0, sum(s.units for s in self.shapes)
        for s in self.shapes:
            out.append(LayerChoice(True, c[h : h + s.units].clone(), c[n : n + s.neurons].clone()))
            h, n = h + s.units, n + s.neurons
        return out


SPACES: dict[str, type[SearchSpace]] = {c.name: c for c in (SmallSpace, MediumSpace, LayerSpace, LargeSpace)}


def check_space_name(name: str) -> str:
    if name not in SPACES:
        raise ValueError(f"unknown search space '{name}': use one of {', '.join(SPACES)}")
    return name


def make_space(name: str, topo: Topology) -> SearchSpace:
    """The named space over this model's blocks."""
    if name not in SPACES:
        raise UsageError(f"unknown search space '{name}': use one of {', '.join(SPACES)}")
    shapes = layer_shapes(topo)
    if not shapes:
        raise UsageError("the model has no transformer blocks to search over")
    return SPACES[name](shapes)
