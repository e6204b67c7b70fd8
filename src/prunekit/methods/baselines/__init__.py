"""The reference points the methods are measured against: `dense` (plain fine-tuning), gradual `magnitude`
(Zhu & Gupta 2017), `movement` (Sanh et al. 2020) and plain `l1` (the NeuroPrune baseline). Their recipe sections
are in `config`; `shrinkage` holds the proximal L1 pull shared with neuroprune."""

from prunekit.methods.baselines.config import (
    GradualMagnitudeConfig,
    L1Config,
    MovementConfig,
    ScheduleConfig,
    ShrinkConfig,
)
from prunekit.methods.baselines.dense import Dense
from prunekit.methods.baselines.l1 import L1
from prunekit.methods.baselines.magnitude import GradualMagnitude
from prunekit.methods.baselines.movement import Movement

__all__ = [
    "Dense",
    "GradualMagnitude",
    "GradualMagnitudeConfig",
    "L1",
    "L1Config",
    "Movement",
    "MovementConfig",
    "ScheduleConfig",
    "ShrinkConfig",
]
