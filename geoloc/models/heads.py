"""What sits on the backbone's features: cell logits, and optionally offsets within each cell."""

from __future__ import annotations

import torch
from torch import nn

# As wide as resnet18's features: enough not to squeeze a few thousand cells' logits through
# a narrow layer, small enough that a frozen-backbone head trains on a CPU in seconds.
HIDDEN = 512


class Head(nn.Module):
    """Dropout on the features, then "linear": one Linear to the K cell logits, or "mlp":
    Linear(hidden) -> ReLU -> Dropout first.

    `hybrid` adds a Linear beside the classifier predicting, for every cell, the photo's
    (east_km, north_km) offset from that cell's point: K x 2 more outputs.
    """

    def __init__(self, in_dim: int, num_classes: int, *, kind: str = "linear",
                 hybrid: bool = False, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if kind == "mlp":
            layers += [nn.Linear(in_dim, HIDDEN), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            in_dim = HIDDEN
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_dim, num_classes)
        self.offsets = None
        if hybrid:
            self.offsets = nn.Linear(in_dim, 2 * num_classes)
            # Zero offsets at first: the hybrid model starts out answering each cell's point,
            # as the plain classifier does, and the regression only moves it from there.
            nn.init.zeros_(self.offsets.weight)
            nn.init.zeros_(self.offsets.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits B x K, offsets B x K x 2 in km, or None without the hybrid part)."""
        x = self.body(features)
        logits = self.classifier(x)
        if self.offsets is None:
            return logits, None
        return logits, self.offsets(x).unflatten(1, (-1, 2))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(features))
