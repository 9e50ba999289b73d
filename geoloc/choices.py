"""Every name a param chooses among, once. Params validation reads these lists; the registries
of builders (sources, backbones, precisions) are keyed by them through `registry`, which
refuses at import a registry that misses a name or has one more, and the code that branches
on a name (protocols, heads, losses, modes) reads the same list."""

from __future__ import annotations

SOURCES = ("synthetic", "mapillary", "local")
PROTOCOLS = ("sequence", "spatial")
ARCHS = ("cnn", "resnet18", "efficientnet_lite0")
FEATURE_BACKBONES = ("efficientnet_lite0", "resnet18")   # the ARCHS with ImageNet weights
HEADS = ("linear", "mlp")
LOSSES = ("cross_entropy", "haversine", "hierarchical")
PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("argmax", "topk", "topk_mean", "hierarchical", "hybrid", "sequence", "sequence_online",
         "retrieval")
SEQUENCE_MODES = ("sequence", "sequence_online")   # the modes that read a photo's drive


def registry(names: tuple[str, ...], entries: dict) -> dict:
    """`entries` in the order of `names`, once it is known to have exactly those keys."""
    if set(entries) != set(names):
        raise RuntimeError(f"a registry of {names} has {tuple(entries)}")
    return {name: entries[name] for name in names}
