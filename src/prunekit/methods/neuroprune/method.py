"""NeuroPrune (Dhurandhar et al., ACL Findings 2024; METHODS.md section 1): dynamic sparse fine-tuning.

No mask variables: two regularisers during ordinary fine-tuning plus a head step after each epoch.

- FFN, preferential-attachment weighted L1 (`ffn_reg`): neuron j's input row(s) are weighted by
  c_in_j = f(fin_j) and its output column by c_out_j = f(fout_j), with fin/fout the fraction of its edges with
  |w| > eps and f = 1 - frac (`linear`) or 1 / (frac + 1e-3) normalised to mean 1 per matrix (`inverse`; dead
  neurons take the live mean, so they do not set the normalisation).
  Sparse neurons are pushed harder, so they empty out and die while well-connected ones are spared. The weights
  are constants (computed without gradient), refreshed every `degree_refresh_steps` optimizer steps.
  Gated FFNs (Llama, SmolLM2: down(act(gate x) * up x)): a neuron's in-edges are its gate row and its up row
  together, fin_j = (nnz(gate_j) + nnz(up_j)) / (2 d), one weight shared by both rows; the neuron is dead as soon
  as either row is empty (act(0) = 0 and x * 0 = 0), which the zero-degree step removes.
- Attention, group l_1^{1/2} (`att_reg`): sum over input dimensions i of sqrt(sum_r |A[r, i]| + 1e-8) with
  A = [Wq; Wk; Wv] (GPT-2's fused c_attn is that matrix already).
- Proximal form (`penalty: proximal`, the default; methods/shrinkage.py): the same two penalties applied as soft
  thresholds after each optimizer step instead of loss terms, because through AdamW a loss term moves a weight by at
  most ~lr per step and a few hundred fine-tuning steps zero almost nothing (measured). FFN entries are pulled by
  their neuron's degree weight (normalised to mean 1 per matrix, so the total pull equals plain L1's and only its
  distribution differs: sparse neurons empty out), Q/K/V columns by 1 / sqrt(their l1 mass) (the group norm
  linearised at the current point); in target mode the pull is capped at the target quantile of |w| / m (capped L1:
  weights that survive the target are not shrunk; a degree weight sets how fast a thin neuron's small weights go,
  never whether its large ones do, which emptied the decoder's thin neurons and broke SmolLM2). A neuron or head
  that dies (zero in- or out-degree) has its remaining weights zeroed at once, which changes nothing it computes.
  `penalty: loss` keeps the paper's loss terms.
- After each epoch, redundant heads (max |P_i - P_j| <= theta on their Q/K/V rows) are found by the greedy
  dominating set, folded into their survivor's output projection and zeroed (methods/heads.py; Llama merges whole
  KV groups). They stay masked for the rest of training; `finalize` returns them in the masks and the pipeline's
  `prunekit.compact.remove` removes them physically (no module swap mid-training: the optimizer stays valid).
- At the end, |w| <= eps becomes 0 and FFN neurons with zero in- or out-degree (and heads whose output columns
  are zero) are removed. With `target_sparsity`, an adaptive controller scales the pull (or alpha and beta) during
  training so the near-zero fraction follows a cubic schedule to the target, and the end is an exact global
  magnitude cut: exactly kept_count(total, target) non-zero weights remain in the blocks' linears after structure
  removal.

- Structure mode (`structure: F`, groups.py): the attention group term and a neuron-level FFN term act as capped
  proximal *group* steps, so whole read dimensions of q/k/v and whole neurons empty; their share of the block
  weights follows the cubic schedule to F, the end empties the weakest groups to F exactly, and the masks name the
  read dimensions left, so compaction gathers q/k/v onto them and removes the neurons: zeros that run faster.

Degree statistics (the paper reports the std of neuron degree) are logged every step; `finalize` leaves the final
ones in `final_report` and `save_plots(dir)` draws the degree histogram.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.masks import LayerMask, MaskSet, attention_inputs, element_masks, live_columns, merge, zero_masked
from prunekit.methods.base import Method, register
from prunekit.methods.baselines.shrinkage import Pull, ShrinkState, mean_one
from prunekit.methods.baselines.zeros import dead_structure, exact_magnitude_cut
from prunekit.methods.neuroprune.config import NeuroPruneConfig
from prunekit.methods.neuroprune.groups import GroupShrink, units
from prunekit.methods.neuroprune.heads import prune_redundant_heads
from prunekit.patterns import kept_count
from prunekit.topology import Topology, get_module, weight_view

INVERSE_OFFSET = 1e-3
GROUP_EPS = 1e-8


# ---------------------------------------------------------------- the regularisers, as plain functions


def degree_weights(frac: torch.Tensor, weighting: str, live: torch.Tensor | None = None) -> torch.Tensor:
    """Per-neuron penalty weights from fractional degrees: sparse neurons get the larger weight. Dead neurons
    (`live` False) get the live neurons' mean: their weights are zero already, and at 1 / 1e-3 each they would set
    the normalisation and shrink every live neuron's pull (by ~200x with 23% dead, as MiniLM had at 90%), handing
    the target to the attention matrices."""
    if weighting == "linear":
        w = 1.0 - frac
    elif weighting == "inverse":
        w = 1.0 / (frac + INVERSE_OFFSET)
    else:
        raise ValueError(f"weighting must be 'linear' or 'inverse', got '{weighting}'")
    if live is not None and bool(live.any()) and not bool(live.all()):
        w = torch.where(live, w, w[live].mean())
    return w / w.mean() if weighting == "inverse" else w


def ffn_penalty(
    inputs: list[torch.Tensor], output: torch.Tensor, c_in: torch.Tensor, c_out: torch.Tensor
) -> torch.Tensor:
    """R_mlp of one layer: sum_j c_in_j ||W1[j, :]||_1 (over every input matrix) + sum_j c_out_j ||W2[:, j]||_1.
    Weights are (out, in); the sums run in float32 whatever the weights' dtype."""
    r = (
        sum((torch.linalg.vector_norm(w, ord=1, dim=1, dtype=torch.float32) * c_in).sum() for w in inputs)
        + (torch.linalg.vector_norm(output, ord=1, dim=0, dtype=torch.float32) * c_out).sum()
    )
    return r


def attention_penalty(qkv: list[torch.Tensor]) -> torch.Tensor:
    """R_att of one layer: sum_i sqrt(sum_r |A[r, i]| + 1e-8) over the input columns of A = [Wq; Wk; Wv]."""
    cols = sum(torch.linalg.vector_norm(w, ord=1, dim=0, dtype=torch.float32) for w in qkv)
    return torch.sqrt(cols + GROUP_EPS).sum()


def group_weights(qkv: list[torch.Tensor]) -> torch.Tensor:
    """Proximal form of R_att: per input column i of A, 1 / sqrt(s_i) with s_i = sum_r |A[r, i]|, the slope of
    sqrt(s) at the current point (a majorise-minimise step: the concave group norm linearised is a weighted L1,
    whose proximal map is a soft threshold), normalised to median 1 over live columns so a few nearly dead columns
    (huge weights: they die next) do not weaken the pull on the rest. Shape (1, d): broadcasts over rows."""
    with torch.no_grad():
        s = sum(w.detach().abs().float().sum(0) for w in qkv)
        g = torch.rsqrt(s + GROUP_EPS)
        live = s > 0
        med = float(g[live].median()) if bool(live.any()) else 1.0
        return (g / med).unsqueeze(0)


def ffn_matrices(model: nn.Module, topo: Topology) -> list[tuple[int, list[torch.Tensor], torch.Tensor]]:
    """(layer, input weight(s), output weight) of every FFN with neurons left, as (out, in) views."""
    return [
        (
            b.index,
            [weight_view(get_module(model, n)) for n in b.ffn.inputs],
            weight_view(get_module(model, b.ffn.output)),
        )
        for b in topo.blocks
        if b.ffn is not None and b.ffn.width
    ]


def edge_counts(inputs: list[torch.Tensor], output: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(in-edges, out-edges) per neuron: entries with |w| > eps in its input row(s) and its output column."""
    with torch.no_grad():
        n_in = sum((w.abs() > eps).sum(1) for w in inputs)
        n_out = (output.abs() > eps).sum(0)
    return n_in, n_out


# ---------------------------------------------------------------- the method


@register
class NeuroPrune(Method):
    """Preferential-attachment L1 on FFN neurons, l_1/2 group sparsity on attention inputs, redundant-head merging
    after each epoch; eps threshold (or an exact cut to `target_sparsity`) and dead-neuron removal at the end."""

    name = "neuroprune"
    config_class = NeuroPruneConfig

    def selectable(self, step: int, total_steps: int) -> bool:
        return step >= self.config.end * total_steps  # masks final from `end` on

    config: NeuroPruneConfig

    def __init__(self, config: NeuroPruneConfig | dict | None = None) -> None:
        super().__init__(config)
        self.c_in: dict[int, torch.Tensor] = {}  # layer -> per-neuron weight of its input row(s)
        self.c_out: dict[int, torch.Tensor] = {}  # layer -> per-neuron weight of its output column
        self.refreshed_at = 0  # optimizer step of the last degree refresh
        self.shrink = ShrinkState(self.config)  # reference magnitudes and the controller's scale
        c = self.config  # structure mode: whole neurons and read dimensions (groups.py)
        self.groups = (
            GroupShrink(c.structure, c.start, c.end, c.control_rate, c.structure_score) if c.structure else None
        )
        self.heads: dict[int, torch.Tensor] = {}  # layer -> query heads kept by the head step (only where < all)
        self.merges: list[list[int]] = []  # [epoch, layer, removed head, into head]
        self.final_report: dict[str, Any] = {}
        self.final_degrees: torch.Tensor | None = None  # fractional degree of every surviving neuron, at the end
        self._pruned: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    # ------------------------------------------------------------ weights, looked up on every call

    def _ffn(self, model: nn.Module | None = None) -> list[tuple[int, list[torch.Tensor], torch.Tensor]]:
        return ffn_matrices(model or self.model, self.topo)

    def _qkv(self, model: nn.Module | None = None) -> list[list[torch.Tensor]]:
        model = model or self.model
        out = []
        for b in self.topo.blocks:
            a = b.attention
            if a is None or not a.num_heads:
                continue
            names = [a.q] if a.fused_qkv else [a.q, a.k, a.v]
            out.append([weight_view(get_module(model, n)) for n in names])
        return out

    def _linears(self, model: nn.Module | None = None) -> list[torch.Tensor]:
        model = model or self.model
        return [weight_view(get_module(model, n)) for n in self.topo.prunable_linears()]

    @property
    def scale(self) -> float:
        """The controller's multiplier (target mode): of alpha and beta (loss form) or of the pull (proximal)."""
        return self.shrink.scale

    def _pulls(self) -> list[Pull]:
        """Proximal form: every thresholded matrix with its per-entry weight. FFN rows / columns by the degree
        weights (mean 1 per matrix), Q/K/V columns by the group weights; in target mode also the blocks' other
        linears (the attention output), uniformly, because the target and the final cut count them."""
        c, model, out = self.config, self.model, []
        mean = (c.alpha + c.beta) / 2
        if mean == 0:
            return out
        done = set()
        for b in self.topo.blocks:
            if c.alpha > 0 and b.ffn is not None and b.ffn.width:
                a = c.alpha / mean
                c_in, c_out = mean_one(self.c_in[b.index]) * a, mean_one(self.c_out[b.index]) * a
                out += [(n, weight_view(get_module(model, n)), c_in[:, None]) for n in b.ffn.inputs]
                out.append((b.ffn.output, weight_view(get_module(model, b.ffn.output)), c_out[None, :]))
                done.update((*b.ffn.inputs, b.ffn.output))
            att = b.attention
            if c.beta > 0 and att is not None and att.num_heads:
                names = [att.q] if att.fused_qkv else [att.q, att.k, att.v]
                qkv = [weight_view(get_module(model, n)) for n in names]
                g = group_weights(qkv) * (c.beta / mean)
                out += [(n, w, g) for n, w in zip(names, qkv, strict=True)]
                done.update(names)
        if c.target_sparsity is not None:
            out += [(n, weight_view(get_module(model, n)), 1.0) for n in self.topo.prunable_linears() if n not in done]
        return out

    # ------------------------------------------------------------ protocol

    def attach(self, model: nn.Module, topo: Topology) -> None:
        super().attach(model, topo)
        self._pruned = None
        self._refresh(self._degrees())
        self.shrink.attach(self._pulls())
        if self.groups is not None:
            self.groups.attach(model, topo)

    @torch.no_grad()
    def _degrees(self) -> dict[int, tuple[torch.Tensor, torch.Tensor, int, int]]:
        """layer -> (in-edges, out-edges, possible in-edges, possible out-edges) per neuron."""
        out = {}
        for i, inputs, output in self._ffn():
            n_in, n_out = edge_counts(inputs, output, self.config.eps)
            out[i] = (n_in, n_out, sum(w.shape[1] for w in inputs), output.shape[0])
        return out

    @torch.no_grad()
    def _refresh(self, degrees: dict[int, tuple[torch.Tensor, torch.Tensor, int, int]]) -> None:
        w = self.config.weighting
        for i, (n_in, n_out, p_in, p_out) in degrees.items():
            live = (n_in > 0) & (n_out > 0)
            self.c_in[i] = degree_weights(n_in.float() / p_in, w, live)
            self.c_out[i] = degree_weights(n_out.float() / p_out, w, live)

    def loss_terms(self, model: nn.Module, batch: dict, outputs: Any) -> dict[str, torch.Tensor]:
        c, terms = self.config, {}
        if c.penalty != "loss":
            return terms
        if c.alpha > 0:
            r = sum(
                ffn_penalty(inputs, output, self.c_in[i].to(output.device), self.c_out[i].to(output.device))
                for i, inputs, output in self._ffn(model)
            )
            if isinstance(r, torch.Tensor):
                terms["ffn_reg"] = c.alpha * self.scale * r
        if c.beta > 0:
            r = sum(attention_penalty(qkv) for qkv in self._qkv(model))
            if isinstance(r, torch.Tensor):
                terms["att_reg"] = c.beta * self.scale * r
        return terms

    @torch.no_grad()
    def on_step(self, step: int, total_steps: int) -> dict[str, float]:
        c = self.config
        degrees = self._degrees()
        if step - self.refreshed_at >= c.degree_refresh_steps:
            self._refresh(degrees)
            self.refreshed_at = step
        logged, mode = {}, "pull"
        if c.target_sparsity is not None:
            mode, logged = self.shrink.control(step, total_steps, self._near_zero())
        if self.groups is not None:  # whole groups first: the element pull then counts what they emptied
            # the share the last move left, once there was one (measured now only before the first move)
            empty = self.groups.empty
            if empty is None:
                empty = self.groups.empty_fraction(units(self.model, self.topo))
            gmode, glog = self.groups.control(step, total_steps, empty)
            logged |= glog
            if gmode != "none":
                logged["structure_shrink"] = self.groups.step(
                    units(self.model, self.topo), total_steps, gmode, glog["structure_goal"]
                )
                zero_masked(self.model, self._structure(self.model), self.topo)
                self.groups.empty = self.groups.empty_fraction(units(self.model, self.topo))
        if c.penalty == "proximal" and mode != "none":
            logged["shrink"] = self.shrink.step(self._pulls(), total_steps, mode, logged.get("near_zero_goal"))
            # a neuron (head) whose in- or out-degree reached 0 is dead: its other weights change nothing, so they
            # are zeroed now (it would be removed at the end anyway); the near-zero fraction the controller follows
            # then counts what removal takes, and a dead unit cannot half-revive through its remaining weights
            zero_masked(self.model, self._structure(self.model), self.topo)
            degrees = self._degrees()
        self.shrink.near = self._near_zero()
        logged |= {"near_zero": self.shrink.near, **_degree_stats(degrees), "heads_kept": float(self._heads_kept())}
        logged["ffn_l1"] = float(sum(sum(float(w.abs().sum()) for w in (*ins, out)) for _, ins, out in self._ffn()))
        return logged

    def _near_zero(self) -> float:
        weights = self._linears()
        small = sum(int((w.abs() <= self.config.eps).sum()) for w in weights)
        return small / max(sum(w.numel() for w in weights), 1)

    def _heads_kept(self) -> int:
        total = 0
        for b in self.topo.blocks:
            if b.attention is not None and b.attention.num_heads:
                keep = self.heads.get(b.index)
                total += int(keep.sum()) if keep is not None else b.attention.num_heads
        return total

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        c = self.config
        if not c.head_pruning:
            return {}
        step = prune_redundant_heads(self.model, self.topo, c.theta, c.theta_mode, c.merge, keep=self.heads)
        self.heads.update(step.keep)
        self.merges += [[epoch, *m] for m in step.merges]
        self._pruned = None
        return {"heads_removed": float(step.removed), "heads_kept": float(self._heads_kept())}

    def masks(self) -> MaskSet | None:
        if not self.heads:
            return None
        masks = MaskSet()
        for i, keep in self.heads.items():
            masks.layer(i).heads = keep.clone()
        return masks

    @torch.no_grad()
    def enforce_masks(self, model: nn.Module) -> None:
        """Keep the removed heads zero (element masks cached between head steps: this runs every step)."""
        masks = self.masks()
        if masks is None:
            return
        if self._pruned is None:
            self._pruned = {n: (~w, ~b) for n, (w, b) in element_masks(model, masks, self.topo).items()}
        for name, (w, b) in self._pruned.items():
            module = get_module(model, name)
            weight_view(module).masked_fill_(w.to(module.weight.device), 0.0)
            if getattr(module, "bias", None) is not None:
                module.bias.masked_fill_(b.to(module.bias.device), 0.0)

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> MaskSet | None:
        """eps threshold (or the exact cut to `target_sparsity`), then the structure that became dead; the weights
        are left final (everything the returned masks prune is zero). Fills `final_report`."""
        self.model = model
        c = self.config
        self.enforce_masks(model)
        weights = self._linears()
        total = sum(w.numel() for w in weights)
        emptied = None
        if self.groups is not None:  # the weakest whole groups first, exactly to `structure`
            emptied = self.groups.cut(units(model, self.topo))
            if self.groups.activations is not None:
                self.groups.activations.remove()  # training is over: no hooks on the model that is saved
            zero_masked(model, self._structure(model), self.topo)
        if c.target_sparsity is not None:
            structure, reached = exact_magnitude_cut(
                model, self.topo, kept_count(total, c.target_sparsity), self._structure
            )
        else:
            for w in weights:
                w.masked_fill_(w.abs() <= c.eps, 0.0)
            structure, reached = self._structure(model), None
        zero_masked(model, structure, self.topo)
        masks = merge(structure)
        for name, w in zip(self.topo.prunable_linears(), self._linears(), strict=True):
            masks.weights[name] = w != 0
            masks.patterns[name] = "unstructured"
        read = self._read_dims(model, masks)
        nonzero = sum(int(torch.count_nonzero(w)) for w in self._linears())
        self.final_degrees, stats = self._final_degrees(structure)
        self.final_report = {
            "sparsity": 1.0 - nonzero / max(total, 1),
            "nonzero_weights": nonzero,
            "total_weights": total,
            **({"target_reached": reached} if reached is not None else {}),
            "heads_kept": _count(structure, self.topo, "heads"),
            "neurons_kept": _count(structure, self.topo, "neurons"),
            "heads_merged": len(self.merges),
            **read,
            **({"structure_removed": emptied} if emptied is not None else {}),
            **stats,
        }
        return masks

    # ------------------------------------------------------------ the end

    @torch.no_grad()
    def _read_dims(self, model: nn.Module, masks: MaskSet) -> dict[str, int]:
        """Name in `masks` the hidden dimensions q/k/v and the FFN inputs no longer read (zero columns in every
        matrix of the group: compaction gathers them away) and count the ones kept, over all layers."""
        hidden, attn, ffn = self.topo.hidden_size, 0, 0
        for b in self.topo.blocks:
            lm = masks.layers.get(b.index)
            heads_left = (
                b.attention is not None
                and b.attention.num_heads
                and (lm is None or lm.heads is None or bool(lm.heads.any()))
            )
            if heads_left:
                cols = live_columns(model, attention_inputs(b.attention), hidden)
                masks.layer(b.index).attn_cols = cols
                attn += int(cols.sum())
            if b.ffn is not None and b.ffn.width:
                cols = live_columns(model, b.ffn.inputs, hidden)
                masks.layer(b.index).ffn_cols = cols
                ffn += int(cols.sum())
        return {"attn_read_dims_kept": attn, "ffn_read_dims_kept": ffn}

    def _structure(self, model: nn.Module) -> MaskSet:
        return dead_structure(model, self.topo, self.masks(), self.config.allow_empty_layers)

    def _final_degrees(self, structure: MaskSet) -> tuple[torch.Tensor, dict[str, float]]:
        degrees = self._degrees()
        fracs, counts = [], []
        for i, (n_in, n_out, p_in, p_out) in degrees.items():
            lm = structure.layers.get(i, LayerMask())
            alive = lm.neurons.to(n_in.device) if lm.neurons is not None else torch.ones_like(n_in, dtype=torch.bool)
            total = (n_in + n_out)[alive]
            counts.append(total.float().cpu())
            fracs.append(total.float().cpu() / (p_in + p_out))
        frac = torch.cat(fracs) if fracs else torch.zeros(0)
        count = torch.cat(counts) if counts else torch.zeros(0)
        stats = {
            "degree_mean": float(count.mean()) if count.numel() else 0.0,
            "degree_std": float(count.std(unbiased=False)) if count.numel() else 0.0,
            "degree_frac_mean": float(frac.mean()) if frac.numel() else 0.0,
            "degree_frac_std": float(frac.std(unbiased=False)) if frac.numel() else 0.0,
        }
        counts_hist, edges = degree_histogram(frac)
        stats["degree_histogram"] = {"edges": edges, "counts": counts_hist}
        return frac, stats

    def report(self) -> dict[str, Any] | None:
        """The degree statistics and what merging and the final cut removed (filled by `finalize`)."""
        return {"final_report": self.final_report} if self.final_report else None

    def save_plots(self, directory: str | Path) -> list[Path]:
        """Write `degree_histogram.png` (final degrees when finalize has run, else the current ones) into
        `directory` (the run's plots/ folder); returns the written paths."""
        degrees = self.final_degrees
        if degrees is None:
            d = self._degrees()
            degrees = torch.cat([((a + b).float() / (pa + pb)).cpu() for a, b, pa, pb in d.values()])
        return [plot_degree_histogram(degrees, Path(directory) / "degree_histogram.png")]

    # ------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {
            "c_in": {str(i): t.detach().cpu().clone() for i, t in self.c_in.items()},
            "c_out": {str(i): t.detach().cpu().clone() for i, t in self.c_out.items()},
            "refreshed_at": self.refreshed_at,
            **self.shrink.state_dict(),
            "heads": {str(i): t.cpu().clone() for i, t in self.heads.items()},
            "merges": [list(m) for m in self.merges],
            **(self.groups.state_dict() if self.groups is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = next(iter(self.c_in.values())).device if self.c_in else torch.device("cpu")
        self.c_in = {int(i): t.to(device) for i, t in state["c_in"].items()}
        self.c_out = {int(i): t.to(device) for i, t in state["c_out"].items()}
        self.refreshed_at = int(state["refreshed_at"])
        self.shrink.load_state_dict(state)
        self.heads = {int(i): t.bool().clone() for i, t in state["heads"].items()}
        self.merges = [list(m) for m in state["merges"]]
        if self.groups is not None:
            self.groups.load_state_dict(state)
        self._pruned = None


# ---------------------------------------------------------------- helpers


# ---------------------------------------------------------------- the end of training, reusable


def _degree_stats(degrees: dict[int, tuple[torch.Tensor, torch.Tensor, int, int]]) -> dict[str, float]:
    """Mean and std of the neurons' total degree (in + out edges), over neurons that have any edge."""
    if not degrees:
        return {}
    total = torch.cat([(a + b).float().cpu() for a, b, _, _ in degrees.values()])
    total = total[total > 0]
    if not total.numel():
        return {"degree_mean": 0.0, "degree_std": 0.0}
    return {"degree_mean": float(total.mean()), "degree_std": float(total.std(unbiased=False))}


def degree_histogram(frac: torch.Tensor, bins: int = 20) -> tuple[list[int], list[float]]:
    """(counts, bin edges) of fractional degrees over [0, 1]."""
    counts = torch.histc(frac.float(), bins=bins, min=0.0, max=1.0) if frac.numel() else torch.zeros(bins)
    edges = [i / bins for i in range(bins + 1)]
    return [int(x) for x in counts.tolist()], edges


def plot_degree_histogram(frac: torch.Tensor, path: str | Path, title: str = "FFN neuron degree") -> Path:
    """PNG histogram of fractional neuron degrees (Agg canvas, no pyplot: no display, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    values = frac.float().cpu().numpy()
    ax.hist(values, bins=40, range=(0.0, 1.0), color="#4c72b0")
    std = float(values.std()) if values.size else math.nan
    ax.set_title(f"{title} ({values.size} neurons, std {std:.3f})")
    ax.set_xlabel("fraction of possible connections (in + out) with |w| > eps")
    ax.set_ylabel("neurons")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    return path


def _count(masks: MaskSet, topo: Topology, what: str) -> int:
    total = 0
    for b in topo.blocks:
        full = (b.attention.num_heads if b.attention else 0) if what == "heads" else (b.ffn.width if b.ffn else 0)
        m = getattr(masks.layers.get(b.index, LayerMask()), what)
        total += int(m.sum()) if m is not None else full
    return total
