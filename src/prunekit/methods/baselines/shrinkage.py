"""Proximal L1 shrinkage and the target-sparsity controller, shared by `l1` and `neuroprune` (METHODS.md 1).

Why a proximal form: a penalty written into the loss reaches the weights through AdamW, which moves each weight
by about lr per step whatever the penalty's scale, so in a fine-tuning budget of a few hundred steps almost
nothing reaches zero and the final cut prunes one-shot (measured: 0.8% / 3.5% near zero after 250 steps on
MiniLM-L6, docs/results.md). The proximal step applies the penalty exactly after each optimizer step,

    w <- sign(w) * max(|w| - tau, 0),   tau = lambda_t * omega * m,

where omega is the penalty's weight for that entry (mean about 1: degree weights, group weights, or 1), m is the
matrix's mean |w| when the method attached (so one strength means the same on any model), and
lambda_t = scale * shrink / total_steps: `shrink` is the total pull over the run in units of m. Exact zeros stay
zero unless the task gradient pushes back harder than tau: weights can return, so sparsity stays dynamic.

In target mode the pull is capped (`capped`): only entries below the target quantile of |w| / m are pulled (capped
L1, whose proximal map leaves large weights alone; omega sets the speed, not the cap), because plain L1 shrinks
every surviving weight by the whole pull, far more than a short fine-tune's optimizer steps restore. The scale
starts where a schedule-long pull would zero exactly `target_sparsity` of the weights if the task did not resist
(the target quantile of |w| / (omega m), reached at `end`), then follows the measured near-zero fraction: up by
`control_rate` per step below the cubic schedule; above it, down, and the step only holds the zeros (entries within
tau of zero return to it; nothing new is pulled), because zeros cannot be undone by lowering the scale, so the
controller must not overshoot.
"""

from __future__ import annotations

import torch

from prunekit.methods.baselines.config import ShrinkConfig
from prunekit.methods.baselines.magnitude import cubic_sparsity

QUANTILE_SAMPLE = 1 << 21  # scores drawn (seeded) to place the target quantile: exact enough, bounded memory

# one thresholded matrix: (name, its (out, in) weight view, omega broadcastable to it)
Pull = tuple[str, torch.Tensor, torch.Tensor | float]


@torch.no_grad()
def soft_threshold_(w: torch.Tensor, tau: torch.Tensor | float) -> None:
    """In place: w <- sign(w) max(|w| - tau, 0), the proximal map of tau * |w| (tau >= 0, broadcastable)."""
    if isinstance(tau, torch.Tensor):
        tau = tau.to(w.device, torch.float32)
    w.sub_((w.sign() * torch.minimum(w.abs().float(), torch.as_tensor(tau, device=w.device))).to(w.dtype))


def mean_one(x: torch.Tensor) -> torch.Tensor:
    """x / mean(x); all ones when the mean is 0 (no information: pull uniformly)."""
    m = float(x.float().mean()) if x.numel() else 0.0
    return x.float() / m if m > 0 else torch.ones_like(x, dtype=torch.float32)


class ShrinkState:
    """The per-matrix reference magnitudes m, the controller's scale, and the proximal step itself."""

    def __init__(self, config: ShrinkConfig) -> None:
        self.config = config
        self.mean_abs: dict[str, float] = {}
        self.scale = 1.0
        # near-zero fraction right after the last step's pull: what the controller compares with the schedule
        # (measured before the pull, weights the optimizer just nudged off zero would read as regrown)
        self.near: float | None = None
        self.zeros: dict[str, torch.Tensor] = {}  # entries the last proximal move left at zero (what `hold` keeps)

    @torch.no_grad()
    def attach(self, pulls: list[Pull]) -> None:
        self.mean_abs = {name: float(w.detach().abs().float().mean()) or 1.0 for name, w, _ in pulls}
        c = self.config
        if c.penalty == "proximal" and c.target_sparsity is not None:
            # over the entries a pull can reach (omega > 0): with many unreachable ones the target quantile would
            # be infinite; the controller raises the scale from there if the target needs more
            span = max(c.end - c.start, 1e-3)
            q = self.quantile(pulls, c.target_sparsity, reachable=True) if pulls else 0.0
            self.scale = max(q, 1e-6) / (span * c.shrink)
        else:
            self.scale = 1.0

    @torch.no_grad()
    def quantile(self, pulls: list[Pull], q: float, sample: bool = True, reachable: bool = False) -> float:
        """The q-quantile of |w| / (omega m) over every thresholded weight (a seeded sample of them when many and
        `sample`). Entries with omega = 0 are never pulled and score infinity; `reachable` leaves them out."""
        return _quantile([self._scores(n, w, om) for n, w, om in pulls], q, sample, reachable)

    def _scores(self, name: str, w: torch.Tensor, omega: torch.Tensor | float) -> torch.Tensor:
        om = torch.as_tensor(omega, dtype=torch.float32).to(w.device) * self.mean_abs[name]
        score = w.detach().abs().float() / om
        return torch.where(om > 0, score, torch.full_like(score, float("inf")))

    def control(self, step: int, total_steps: int, near: float) -> tuple[str, dict[str, float]]:
        """Target mode: move the scale toward the schedule. Returns what the proximal step does now, `pull`
        (below the schedule, or no target), `hold` (above it: entries the last move left at zero and the optimizer
        nudged by less than tau go back to zero, so only a strong gradient regrows one, and nothing new is pulled:
        zeros cannot be undone by lowering the scale) or `none` (before `start`), and the values to log. `near` is
        the fraction now; the one left by the previous step's proximal move is used when there is one."""
        c = self.config
        near = near if self.near is None else self.near
        goal = cubic_sparsity(step, total_steps, c.target_sparsity, 0.0, c.start, c.end)
        factor, mode = 1.0 + c.control_rate, "pull" if step >= c.start * max(total_steps, 1) else "none"
        if mode == "pull":
            if near < goal:
                self.scale *= factor
            elif near > goal:
                self.scale /= factor
                mode = "hold"
            if c.penalty == "loss":
                self.scale = min(max(self.scale, 1.0 / c.max_scale), c.max_scale)
        return mode, {"near_zero_goal": goal, "reg_scale": self.scale}

    @torch.no_grad()
    def step(self, pulls: list[Pull], total_steps: int, mode: str = "pull", goal: float | None = None) -> float:
        """One proximal move on every matrix (`pull`: soft threshold; `hold`: last move's zeros within tau of zero
        back to zero, the rest untouched); returns lambda_t (tau in units of omega m). With `goal` (a fraction of
        the pulled entries), a pull that would zero more than that is shortened to the exact score quantile that
        reaches it, so target mode never overshoots by a step's worth."""
        c = self.config
        lam = self.scale * c.shrink / max(total_steps, 1)
        if mode == "none":
            return lam
        capped = mode == "pull" and c.capped and bool(c.target_sparsity)
        # the scores before the move, computed once: the goal check reads them
        scores = [self._scores(n, w, om) for n, w, om in pulls] if mode == "pull" and goal is not None else None
        if scores is not None:
            total = sum(w.numel() for _, w, _ in pulls)
            zeroed = sum(int((sc <= lam).sum()) for sc in scores)
            if zeroed > goal * total:
                lam = min(lam, _quantile(scores, goal, sample=False))
        # the cap is a magnitude (|w| / m, omega left out): omega sets how fast an entry is pulled, never whether a
        # weight that survives the target is. Capping the weighted score instead let a large omega (a thin neuron's
        # degree weight) pull every weight of its unit, large ones included, to zero (measured: SmolLM2-135M's
        # perplexity 21 -> 66 at 25% as thin neurons died, 26 with the weights frozen; docs/results.md)
        magnitudes = [self._scores(n, w, 1.0) for n, w, _ in pulls] if capped else None
        cap = _quantile(magnitudes, c.target_sparsity) if capped else None
        for k, (name, w, omega) in enumerate(pulls):
            tau = torch.as_tensor(omega, dtype=torch.float32) * (lam * self.mean_abs[name])
            if cap is not None:  # capped: entries above the target magnitude quantile are not pulled
                tau = tau.to(w.device) * (magnitudes[k] <= cap)
            if mode == "pull":
                soft_threshold_(w, tau)
            elif name in self.zeros:
                w.masked_fill_(self.zeros[name].to(w.device) & (w.abs().float() <= tau.to(w.device)), 0.0)
            if c.target_sparsity is not None:
                self.zeros[name] = (w == 0).cpu()
        return lam

    def state_dict(self) -> dict:
        zeros = {k: v.clone() for k, v in self.zeros.items()}
        return {"mean_abs": dict(self.mean_abs), "scale": self.scale, "near": self.near, "zeros": zeros}

    def load_state_dict(self, state: dict) -> None:
        self.mean_abs = {str(k): float(v) for k, v in state.get("mean_abs", self.mean_abs).items()}
        self.scale = float(state.get("scale", self.scale))
        self.near = None if state.get("near") is None else float(state["near"])
        self.zeros = {str(k): v.bool().clone() for k, v in state.get("zeros", {}).items()}


def _quantile(scores: list[torch.Tensor], q: float, sample: bool = True, reachable: bool = False) -> float:
    """The q-quantile of the scores (a seeded sample of them when many and `sample`; only finite ones when
    `reachable`)."""
    flat = torch.cat([sc.flatten().cpu() for sc in scores])
    if reachable:
        flat = flat[torch.isfinite(flat)]
    if not flat.numel():
        return 0.0
    if sample and flat.numel() > QUANTILE_SAMPLE:
        g = torch.Generator().manual_seed(0)
        flat = flat[torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=g)]
    k = min(max(round(q * flat.numel()), 1), flat.numel())
    return float(flat.kthvalue(k).values)
