"""NxMTransformer (Holmes et al. 2021): N:M semi-structured sparsity by ADMM, and the ASP baseline it beats.

ADMM (`admm`) splits "fit the task" from "be N:M sparse": the weights W train on the task loss plus
(rho/2) * ||W - Z + U||^2, an auxiliary Z = Pi(W + U) (the exact N:M projection) and the scaled dual
U += W - Z are updated every `admm_interval`, so W drifts towards an N:M point gradually instead of losing
half its weights at once. At `end` (a fraction of the run's optimizer steps) W is hard-pruned to Pi(W) and
the rest of the run fine-tunes with that mask frozen; the trainer selects the best checkpoint only from
`end` on, i.e. only among masked states. Distillation from the dense teacher is the pipeline's `distill:`.

ASP (`asp`) is one-shot magnitude N:M of the fine-tuned weights at step 0, then masked fine-tuning: the
`magnitude` method with its N:M mask fixed at attach time.

N:M follows NVIDIA's spelling (2:4 keeps 2 of every 4 consecutive inputs); see METHODS.md section 2.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.core.errors import UsageError
from prunekit.masks import MaskSet, zero_masked
from prunekit.methods.base import Method, check_patterns_fit, register
from prunekit.methods.baselines.config import GradualMagnitudeConfig
from prunekit.methods.baselines.magnitude import GradualMagnitude
from prunekit.methods.nxm.config import AdmmConfig, AspConfig, parse_nm
from prunekit.methods.oneshot.start import OneShotStart
from prunekit.patterns import Pattern, nm_mask
from prunekit.topology import Topology, get_module, weight_view


def check_targets(model: nn.Module, names: list[str], pattern: Pattern, pad_tail: bool) -> None:
    """Every target must split into whole groups of M inputs: refuse now, naming the module, not mid-run."""
    for name in names:
        w = weight_view(get_module(model, name))
        try:
            nm_mask(torch.zeros(1, w.shape[1]), pattern.n, pattern.m, pad_tail)
        except UsageError as exc:
            raise UsageError(f"module '{name}': {exc}") from None


@register
class Admm(OneShotStart, Method):
    """ADMM towards N:M, then hard prune and masked retraining (NxMTransformer)."""

    name = "admm"
    config_class = AdmmConfig

    def selectable(self, step: int, total_steps: int) -> bool:
        return step >= self.config.end * total_steps  # masks final from `end` on

    def check_model(self, model: nn.Module) -> None:
        check_patterns_fit(model, self.config.pattern, self.config.pad_tail)

    config: AdmmConfig
    needs_finetuned = True  # ADMM starts from the task-fine-tuned dense model

    def __init__(self, config: AdmmConfig | dict | None = None) -> None:
        super().__init__(config)
        self.pattern = parse_nm(self.config.pattern)
        self.targets: list[str] = []
        self.z: dict[str, torch.Tensor] = {}
        self.u: dict[str, torch.Tensor] = {}
        self.rho = self.config.rho
        self.last_update = 0  # step of the last Z/U update (int admm_interval)
        self.updates = 0
        self.pruned = False
        self.mask: dict[str, torch.Tensor] = {}  # frozen (out, in) masks after the hard prune
        self.residual_history: list[dict[str, Any]] = []  # one entry per Z/U update and one at the prune
        self._masks: MaskSet | None = None
        self._step = 0

    # ------------------------------------------------------------------ setup

    def report(self) -> dict[str, Any] | None:
        return self.start_report()

    def attach(self, model: nn.Module, topo: Topology) -> None:
        super().attach(model, topo)
        self.targets = topo.prunable_linears()  # every linear of every block; never embeddings or heads
        check_targets(model, self.targets, self.pattern, self.config.pad_tail)
        if self.config.train_only_targets:
            keep = {id(p) for n in self.targets for p in get_module(model, n).parameters(recurse=False)}
            for p in model.parameters():
                if id(p) not in keep:
                    p.requires_grad_(False)
        # Z = Pi(W0), U = 0 (standard scaled ADMM). U = W0 - Z, as METHODS.md first had it, makes the first
        # W-steps aim at 2 Pi(W0) - W0 (past zero) and the next Z = Pi(W + U) favour the small weights, whose
        # values it doubled: Z's pattern flips and the primal residual grows instead of falling.
        with torch.no_grad():
            for name in self.targets:
                w = self._w(name).detach().float()
                self.z[name] = self._project(w)
                self.u[name] = torch.zeros_like(w)

    def _w(self, name: str) -> torch.Tensor:
        return weight_view(get_module(self.model, name))

    def _mask_of(self, w: torch.Tensor) -> torch.Tensor:
        return nm_mask(w, self.pattern.n, self.pattern.m, self.config.pad_tail)

    def _project(self, w: torch.Tensor) -> torch.Tensor:
        return w * self._mask_of(w)

    def _on(self, d: dict[str, torch.Tensor], name: str, device: torch.device) -> torch.Tensor:
        """State lives where the weight lives (the model moves to the accelerator after attach)."""
        if d[name].device != device:
            d[name] = d[name].to(device)
        return d[name]

    # ------------------------------------------------------------------ the W-step's penalty

    def loss_terms(self, model: nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]:
        if self.pruned or not self.targets or self.config.w_step == "proximal":
            return {}
        total = None
        for name in self.targets:
            w = weight_view(get_module(model, name))
            z, u = self._on(self.z, name, w.device), self._on(self.u, name, w.device)
            term = (w.float() - z + u).pow(2).sum()
            total = term if total is None else total + term
        return {"admm": 0.5 * self.rho * total}

    # ------------------------------------------------------------------ Z/U updates and the hard prune

    @torch.no_grad()
    def proximal_step(self) -> float:
        """W <- W - pull * (W - Z + U): the exact minimiser of (rho/2)||W - Z + U||^2 + ||W - W_t||^2 / (2 eta)
        for pull = eta * rho / (1 + eta * rho), applied after the optimizer's step on the task loss. Returns the
        penalty (rho/2)||W - Z + U||^2 before the move, logged as the loss form's `admm` term is."""
        pull = min(self.config.pull * self.rho / self.config.rho, 1.0)
        penalty = 0.0
        for name in self.targets:
            w = self._w(name)
            z, u = self._on(self.z, name, w.device), self._on(self.u, name, w.device)
            gap = w.float() - z + u
            penalty += float(gap.pow(2).sum())
            w.sub_((pull * gap).to(w.dtype))
        return 0.5 * self.rho * penalty

    @torch.no_grad()
    def primal_residuals(self) -> dict[str, float]:
        """||W - Z||_F per target: zero exactly when W is the N:M point ADMM converged to."""
        out = {}
        for name in self.targets:
            w = self._w(name)
            out[name] = float((w.float() - self._on(self.z, name, w.device)).norm())
        return out

    @torch.no_grad()
    def admm_update(self, step: int) -> dict[str, float]:
        """Z = Pi(W + U), U = U + W - Z; then rho grows and U is rescaled by rho_old / rho_new (U is the dual
        scaled by 1/rho, Boyd et al. 2011 section 3.4.1), so the unscaled dual is unchanged."""
        primal, dual = {}, 0.0
        for name in self.targets:
            w = self._w(name).float()
            z_old, u = self._on(self.z, name, w.device), self._on(self.u, name, w.device)
            z = self._project(w + u)
            u = u + w - z
            self.z[name], self.u[name] = z, u
            primal[name] = float((w - z).norm())
            dual += float((z - z_old).pow(2).sum())
        rho = self.rho
        new_rho = min(rho * self.config.rho_growth, self.config.rho_max or math.inf)
        if new_rho != rho:
            for name in self.targets:
                self.u[name] = self.u[name] * (rho / new_rho)
        self.rho = new_rho
        self.last_update, self.updates = step, self.updates + 1
        total = math.sqrt(sum(v * v for v in primal.values()))
        entry = {"step": step, "rho": rho, "primal_residual": total, "dual_residual": rho * math.sqrt(dual)}
        self.residual_history.append(entry | {"layers": primal})
        return entry | self._per_block(primal)

    def _per_block(self, residuals: dict[str, float]) -> dict[str, float]:
        """Per-transformer-layer residuals for the log (per module is too many columns for a big model)."""
        out = {}
        for b in self.topo.blocks:
            vals = [residuals[n] for n in b.linears() if n in residuals]
            if vals:
                out[f"primal_residual/layer{b.index}"] = math.sqrt(sum(v * v for v in vals))
        return out

    @torch.no_grad()
    def hard_prune(self, step: int) -> None:
        """W = Pi(W) and freeze the mask; Z and U are dropped (they have done their job)."""
        before = self.primal_residuals()
        for name in self.targets:
            w = self._w(name)
            self.mask[name] = self._mask_of(w.detach())
            w.mul_(self.mask[name].to(w.dtype))
        self.pruned = True
        self.z, self.u = {}, {}
        total = math.sqrt(sum(v * v for v in before.values()))
        self.residual_history.append(
            {"step": step, "rho": self.rho, "primal_residual": total, "dual_residual": 0.0, "layers": before}
            | {"pruned": True}
        )
        self._masks = None

    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        self._step = step  # on_epoch_end is not told the step; it always follows this step's on_step
        if self.pruned:
            return {}
        if step >= self.config.end * max(int(total_steps), 1):
            self.hard_prune(step)
            return {"hard_prune": 1.0, "rho": self.rho}
        logged: dict[str, float] = {}
        if self.config.w_step == "proximal":
            logged["admm"] = self.proximal_step()
        if isinstance(self.config.admm_interval, int) and step - self.last_update >= self.config.admm_interval:
            logged |= self.admm_update(step)
        else:
            logged["primal_residual"] = math.sqrt(sum(v * v for v in self.primal_residuals().values()))
        return logged | {"rho": self.rho}

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        if self.pruned or self.config.admm_interval != "epoch":
            return {}
        return self.admm_update(self._step)

    # ------------------------------------------------------------------ masks

    def masks(self) -> MaskSet | None:
        if not self.pruned:
            return None
        if self._masks is None:
            self._masks = MaskSet(
                weights={n: m.cpu() for n, m in self.mask.items()}, patterns=dict.fromkeys(self.mask, str(self.pattern))
            )
        return self._masks

    @torch.no_grad()
    def enforce_masks(self, model: nn.Module) -> None:
        """Masked weights back to exactly zero after every optimizer step (AdamW's decay and moments included)."""
        for name, mask in self.mask.items():
            w = weight_view(get_module(model, name))
            if mask.device != w.device:
                self.mask[name] = mask = mask.to(w.device)
            w.masked_fill_(~mask, 0.0)

    def finalize(self, model: nn.Module) -> MaskSet | None:
        """The frozen masks; a run stopped before `end` is hard-pruned now, so the pattern always holds."""
        self.model = model
        if not self.pruned:
            self.hard_prune(-1)
        self.enforce_masks(model)
        return self.masks()

    # ------------------------------------------------------------------ checkpoints and plots

    def state_dict(self) -> dict[str, Any]:
        return {
            "z": {k: v.detach().cpu().clone() for k, v in self.z.items()},
            "u": {k: v.detach().cpu().clone() for k, v in self.u.items()},
            "mask": {k: v.cpu().clone() for k, v in self.mask.items()},
            "rho": self.rho,
            "last_update": self.last_update,
            "updates": self.updates,
            "pruned": self.pruned,
            "history": [dict(e, layers=dict(e["layers"])) for e in self.residual_history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.z = {k: v.float() for k, v in state["z"].items()}
        self.u = {k: v.float() for k, v in state["u"].items()}
        self.mask = {k: v.bool() for k, v in state["mask"].items()}
        self.rho = float(state["rho"])
        self.last_update, self.updates = int(state["last_update"]), int(state["updates"])
        self.pruned = bool(state["pruned"])
        self.residual_history = [dict(e, layers=dict(e["layers"])) for e in state["history"]]
        self._masks = None

    def save_plots(self, out_dir: str | Path) -> Path | None:
        """admm_residual.png: total and per-module primal residual per Z/U update (log scale), the convergence
        signal to check before trusting the hard prune (a residual that has not fallen means rho is too small)."""
        points = [e for e in self.residual_history if e["step"] >= 0 and not e.get("pruned")]
        if not points:
            return None
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        fig = Figure(figsize=(7, 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        x = list(range(1, len(points) + 1))
        for name in points[0]["layers"]:
            ax.plot(x, [max(e["layers"][name], 1e-12) for e in points], color="0.75", linewidth=0.6)
        ax.plot(x, [max(e["primal_residual"], 1e-12) for e in points], color="C0", linewidth=2, label="total")
        ax.set_yscale("log")
        ax.set_xlabel("Z/U update")
        ax.set_ylabel("primal residual ||W - Z||_F")
        ax.set_title(f"ADMM towards {self.pattern} (grey: each linear)")
        ax.legend()
        fig.tight_layout()
        path = out / "admm_residual.png"
        fig.savefig(path, dpi=120)
        return path


# ---------------------------------------------------------------------- ASP baseline


@register
class Asp(OneShotStart, GradualMagnitude):
    """NVIDIA ASP: one-shot magnitude N:M of the fine-tuned weights, then masked fine-tuning for the whole
    run. The `magnitude` method with its N:M mask computed and applied at attach, before the first step."""

    name = "asp"
    # the recipe's fields (what `prunekit methods asp` lists); self.config is the magnitude config built from them
    config_class = AspConfig
    is_baseline = True  # NVIDIA's one-shot 2:4 recipe, the reference ADMM is measured against
    needs_finetuned = True

    def __init__(self, config: AspConfig | dict | None = None) -> None:
        own = config if isinstance(config, AspConfig) else AspConfig.model_validate(config or {})
        self.asp_config = own
        super().__init__(GradualMagnitudeConfig(pattern=own.pattern, start=0.0, end=0.0, pad_tail=own.pad_tail))

    def start_config(self) -> AspConfig:
        return self.asp_config

    def report(self) -> dict[str, Any] | None:
        return self.start_report()

    def attach(self, model: nn.Module, topo: Topology) -> None:
        check_targets(model, topo.prunable_linears(), parse_nm(self.asp_config.pattern), self.asp_config.pad_tail)
        super().attach(model, topo)
        self._update(0.0)
        self.schedule.mark(0, 1)  # done: nothing is recomputed later
        zero_masked(model, self._merged, topo)

    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}
