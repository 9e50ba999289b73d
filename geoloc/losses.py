"""Training losses over the cell classes (../shared/reference/geolocation.md, "Losses and heads").

One class term, chosen by `loss.name`:
- cross_entropy: plain cross entropy with label smoothing.
- haversine: PIGEON's haversine label smoothing, a soft target that favours cells near the
  photo, so a near miss costs less than a far one.
- hierarchical: OSV-5M's cell cross entropy plus the cross entropy of the same distribution
  summed into the cells' ancestors at every coarser H3 resolution.
and two optional terms: the hybrid head's offset regression and a smoothness prior that pulls
the head's weights of neighbouring cells together.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoloc.data.cells import hierarchy_levels, neighbour_edges
from geoloc.geo import EARTH_RADIUS_KM
from geoloc.params import LossParams

OFFSET_BETA_KM = 1.0


def build_loss(cfg: LossParams, cells: pd.DataFrame) -> GeoLoss:
    """The loss for the class table `cells` (one row per class, sorted by label 0..K-1)."""
    if not np.array_equal(cells["label"].to_numpy(), np.arange(len(cells))):
        raise ValueError("the class table must hold one row per label 0..K-1, in label order")
    points = cells[["lat", "lon"]].to_numpy(dtype=np.float64)
    levels = hierarchy_levels(cells) if cfg.name == "hierarchical" else {}
    return GeoLoss(cfg, points, levels, neighbour_edges(cells))


class GeoLoss(nn.Module):
    """The training loss: `forward` returns (total, {part: value}); the parts are the weighted
    terms, so they add up to the total, and are detached for logging.

    The cell points, group indices and edges are buffers, so `.to(device)` moves them. They
    are not persistent: build_loss rebuilds them from the class table.
    """

    def __init__(self, cfg: LossParams, points: np.ndarray, levels: dict[int, np.ndarray],
                 edges: np.ndarray):
        super().__init__()
        self.name = cfg.name
        self.label_smoothing = cfg.label_smoothing
        self.tau_km = cfg.tau_km
        self.hierarchy_weight = cfg.hierarchy_weight
        self.offset_weight = cfg.offset_weight
        self.adjacency_weight = cfg.adjacency_weight
        self.register_buffer("points", torch.tensor(points, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("edges", torch.tensor(edges, dtype=torch.int64),
                             persistent=False)
        self.levels = {r: int(groups.max()) + 1 for r, groups in levels.items()}
        for r, groups in levels.items():
            self.register_buffer(f"group_r{r}", torch.tensor(groups, dtype=torch.int64),
                                 persistent=False)

    def forward(self, logits: Tensor, labels: Tensor, positions: Tensor,
                offsets: Tensor | None = None, head_weight: Tensor | None = None,
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """logits (B, K); labels (B,); positions (B, 2) true (lat, lon) in degrees; offsets
        (B, K, 2) predicted (east_km, north_km) from every class's point; head_weight (K, F)."""
        logits = at_least_float32(logits)
        parts = self.class_parts(logits, labels, positions)
        if offsets is not None and self.offset_weight > 0:
            parts["offset"] = self.offset_weight * self.offset_loss(offsets, labels, positions)
        if head_weight is not None and self.adjacency_weight > 0:
            parts["adjacency"] = self.adjacency_weight * self.adjacency_loss(head_weight)
        total = sum(parts.values())
        return total, {name: value.detach() for name, value in parts.items()}

    def class_parts(self, logits: Tensor, labels: Tensor, positions: Tensor) -> dict[str, Tensor]:
        if self.name == "haversine":
            return {"haversine": self.haversine_loss(logits, positions)}
        parts = {"cross_entropy": F.cross_entropy(logits, labels,
                                                  label_smoothing=self.label_smoothing)}
        if self.name == "hierarchical":
            for r, n_groups in self.levels.items():
                groups = self.get_buffer(f"group_r{r}")
                # Plain cross entropy here: the cell level's smoothing already spreads mass.
                parent = F.cross_entropy(group_logits(logits, groups, n_groups), groups[labels])
                parts[f"hierarchy_r{r}"] = self.hierarchy_weight * parent
        return parts

    def haversine_loss(self, logits: Tensor, positions: Tensor) -> Tensor:
        """Cross entropy against q_i ~ exp(-(d(photo, c_i) - d(photo, c_true)) / tau).

        The d(photo, c_true) shift is a constant per photo, so after normalising q is
        softmax(-d / tau), which never overflows, even when another class's point is much
        closer to the photo than its own (that class then gets the larger weight, as in
        PIGEON: the target is about place, not label).
        """
        lat, lon = positions[:, :1], positions[:, 1:]
        km = haversine_km(lat, lon, self.points[:, 0], self.points[:, 1])  # (B, K)
        target = torch.softmax(-km / self.tau_km, dim=1).to(logits.dtype)
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()

    def offset_loss(self, offsets: Tensor, labels: Tensor, positions: Tensor) -> Tensor:
        """Smooth L1 in km between the true class's predicted offset and the photo's offset
        from that class's point, summed over (east, north), mean over the batch. Only the true
        class's offset is trained: the others have no target.

        beta = 1 km: quadratic inside a kilometre, where the gradient should fade as the
        prediction closes in, linear beyond, so a photo tens of km from its point (a large
        coarse cell, a bad GPS fix) pulls no harder than a near one, as an L1 in km would.
        """
        point = self.points[labels]
        east, north = offsets_km(positions[:, 0], positions[:, 1], point[:, 0], point[:, 1])
        true = torch.stack([east, north], dim=1)
        predicted = at_least_float32(offsets[torch.arange(len(labels), device=labels.device),
                                             labels])
        true = true.to(predicted.dtype)
        return F.smooth_l1_loss(predicted, true, beta=OFFSET_BETA_KM,
                                reduction="none").sum(dim=1).mean()

    def adjacency_loss(self, head_weight: Tensor) -> Tensor:
        """Mean over the neighbour edges (i, j) of ||W_i - W_j||^2: a graph Laplacian prior,
        neighbouring places should have similar prototypes. 0 without edges."""
        if len(self.edges) == 0:
            return head_weight.new_zeros(())
        diff = head_weight[self.edges[:, 0]] - head_weight[self.edges[:, 1]]
        return diff.pow(2).sum(dim=1).mean()


def at_least_float32(x: Tensor) -> Tensor:
    # Half precision (AMP) would lose the small probabilities that soft targets and parent sums
    # add up, and metres in an offset of tens of km, so the losses run in float32 at least.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def group_logits(logits: Tensor, groups: Tensor, n_groups: int) -> Tensor:
    """(B, G) logsumexp of the logits of each group's classes: the log of the group's summed
    probability, up to the softmax's normaliser, which cross entropy removes anyway.

    Each group is shifted by its own largest logit, so every group's sum is at least 1 and
    none underflows to log 0, however unlikely it is. The shift cancels, so it needs no
    gradient."""
    index = groups.expand_as(logits)
    top = torch.full((len(logits), n_groups), -math.inf, dtype=logits.dtype,
                     device=logits.device)
    top = top.scatter_reduce(1, index, logits.detach(), "amax", include_self=False)
    sums = torch.zeros_like(top).index_add(1, groups, torch.exp(logits - top.gather(1, index)))
    return sums.log() + top


def haversine_km(lat1: Tensor, lon1: Tensor, lat2: Tensor, lon2: Tensor) -> Tensor:
    """Great-circle km between points in degrees; broadcasts. The torch twin of
    geoloc.geo.haversine_km."""
    lat1, lon1, lat2, lon2 = (torch.deg2rad(v) for v in (lat1, lon1, lat2, lon2))
    a = (torch.sin((lat2 - lat1) / 2) ** 2
         + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a.clamp(0.0, 1.0)))


def offsets_km(lat: Tensor, lon: Tensor, lat0: Tensor, lon0: Tensor) -> tuple[Tensor, Tensor]:
    """(east_km, north_km) of points from (lat0, lon0), degrees in; the torch twin of
    geoloc.geo.offsets_km (equirectangular around (lat0, lon0), dlon wrapped to [-pi, pi))."""
    lat, lon, lat0, lon0 = (torch.deg2rad(v) for v in (lat, lon, lat0, lon0))
    dlon = torch.remainder(lon - lon0 + math.pi, 2 * math.pi) - math.pi
    return EARTH_RADIUS_KM * dlon * torch.cos(lat0), EARTH_RADIUS_KM * (lat - lat0)
