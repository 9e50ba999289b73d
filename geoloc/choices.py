"""Every name a param chooses among, once. Params validation reads these lists; the registries
of builders (sources, backbones, precisions) are keyed by them through `registry`, which
refuses at import a registry that misses a name or has one more, and the code that branches
on a name (protocols, heads, losses, modes) reads the same list. Beside them, what params
need to know of a name without importing its code: the aliases a name may be given, and each
feature backbone's native input size."""

from __future__ import annotations

SOURCES = ("synthetic", "mapillary", "local")
PROTOCOLS = ("sequence", "spatial")
EFFICIENTNET_LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
ARCHS = ("cnn", "resnet18", *EFFICIENTNET_LITE)
FEATURE_BACKBONES = (*EFFICIENTNET_LITE, "resnet18")   # the ARCHS with ImageNet weights
# A family's name stands for its default member. Params resolve it as they are read, so every
# record (checkpoint, model card, snapshot) names the member, and two runs that differ only by
# the alias are the same run.
ALIASES = {"efficientnet": "efficientnet_lite0"}
HEADS = ("linear", "mlp")
LOSSES = ("cross_entropy", "haversine", "hierarchical")
PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("argmax", "topk", "topk_mean", "hierarchical", "hybrid", "sequence", "sequence_online",
         "retrieval", "place")
RETRIEVAL_MODES = ("retrieval", "place")   # the modes that search the feature index
SEQUENCE_MODES = ("sequence", "sequence_online")   # the modes that read a photo's drive
# How a photo is told to be a 360 panorama: auto (its XMP says equirectangular or, without a
# GPano projection, it is exactly 2:1), always, never.
PANORAMA_DETECTION = ("auto", "always", "never")


def registry(names: tuple[str, ...], entries: dict) -> dict:
    """`entries` in the order of `names`, once it is known to have exactly those keys."""
    if set(entries) != set(names):
        raise RuntimeError(f"a registry of {names} has {tuple(entries)}")
    return {name: entries[name] for name in names}


# The square input each backbone's ImageNet weights were trained at (features.size: auto):
# Lite0-2's as the efficientnet-lite-pytorch package gives them, resnet18's as torchvision's
# transforms crop (tests/test_models.py checks both).
NATIVE_SIZES = registry(FEATURE_BACKBONES, {
    "efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260,
    "resnet18": 224,
})
