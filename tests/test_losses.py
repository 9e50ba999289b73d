import math
from dataclasses import replace

import h3
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_index_and_splits import SPLIT, fake_images, index_cfg

from geoloc import geo, losses
from geoloc.choices import LOSSES
from geoloc.data.cells import build_index, cell_table, hierarchy_levels, neighbour_edges
from geoloc.data.splits import make_splits
from geoloc.losses import build_loss, group_logits
from geoloc.params import LossParams

BASE = LossParams(name="cross_entropy", label_smoothing=0.0, tau_km=10.0, hierarchy_weight=1.0,
                  offset_weight=0.0, adjacency_weight=0.0)


def cfg(**changes) -> LossParams:
    return replace(BASE, **changes)


def class_table(cells, coarsest: int) -> pd.DataFrame:
    """A class table as the index and split stages build it, each class's point its centre."""
    kept = sorted(cells)
    table = cell_table(kept, pd.Series(1, index=kept), coarsest)
    return table.assign(lat=table["center_lat"], lon=table["center_lon"])


# 19 res-6 cells (~3.7 km edges) around Grenoble, and their res-5 parents.
DISK = class_table(h3.grid_disk(h3.latlng_to_cell(45.0, 5.0, 6), 2), coarsest=5)


def batch(table: pd.DataFrame, labels, seed: int = 0, jitter_km: float = 0.0):
    """Random logits, the labels, and positions `jitter_km` (east, north) from their points."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    logits = torch.randn(len(labels), len(table), generator=gen)
    point = table[["lat", "lon"]].to_numpy()[labels.numpy()]
    shift = jitter_km * (2 * torch.rand(len(labels), 2, generator=gen).numpy() - 1)
    lat, lon = geo.shift_km(point[:, 0], point[:, 1], shift[:, 0], shift[:, 1])
    positions = torch.tensor(np.stack([lat, lon], axis=1), dtype=torch.float32)
    return logits, labels, positions


# --- geo.offsets_km / shift_km and their torch twins ---------------------------------------


def test_offsets_and_shift_round_trip_across_the_antimeridian():
    rng = np.random.default_rng(0)
    lat0, lon0 = rng.uniform(-70, 70, 200), rng.uniform(-180, 180, 200)
    lat, lon = lat0 + rng.normal(0, 0.3, 200), lon0 + rng.normal(0, 0.3, 200)
    lon = np.mod(lon + 180, 360) - 180
    east, north = geo.offsets_km(lat, lon, lat0, lon0)
    assert np.abs(east).max() < 300 and np.abs(north).max() < 300  # no 360-degree jumps
    back_lat, back_lon = geo.shift_km(lat0, lon0, east, north)
    assert back_lat == pytest.approx(lat, abs=1e-9)
    assert back_lon == pytest.approx(lon, abs=1e-9)
    # 0.2 degrees east across the antimeridian, at the equator: 22.2 km east, not -40,000
    east, north = geo.offsets_km(0.0, -179.9, 0.0, 179.9)
    assert (east, north) == pytest.approx((0.2 * math.pi / 180 * geo.EARTH_RADIUS_KM, 0.0))


def test_offsets_measure_distance_within_half_a_percent_at_cell_scale():
    rng = np.random.default_rng(1)
    lat0, lon0 = rng.uniform(40, 60, 500), rng.uniform(-5, 10, 500)
    east, north = rng.uniform(-30, 30, 500), rng.uniform(-30, 30, 500)
    lat, lon = geo.shift_km(lat0, lon0, east, north)
    great_circle = geo.haversine_km(lat0, lon0, lat, lon)
    assert np.hypot(east, north) == pytest.approx(great_circle, rel=5e-3)
    east, north = geo.offsets_km(45.1, 5.0, 45.0, 5.0)  # due north
    assert north == pytest.approx(0.1 * math.pi / 180 * geo.EARTH_RADIUS_KM) and east == 0


def test_torch_geometry_equals_numpy():
    rng = np.random.default_rng(2)
    values = [rng.uniform(43, 47, 50), (rng.uniform(170, 190, 50) + 180) % 360 - 180,
              rng.uniform(43, 47, 50), (rng.uniform(170, 190, 50) + 180) % 360 - 180]
    tensors = [torch.tensor(v, dtype=torch.float64) for v in values]
    for got, want in zip(losses.offsets_km(*tensors), geo.offsets_km(*values), strict=True):
        assert got.numpy() == pytest.approx(want, abs=1e-9)
    assert losses.haversine_km(*tensors).numpy() == pytest.approx(geo.haversine_km(*values),
                                                                  abs=1e-9)


# --- class terms ----------------------------------------------------------------------------


def test_cross_entropy_is_torch_cross_entropy_with_label_smoothing():
    logits, labels, positions = batch(DISK, [0, 5, 18, 5])
    total, parts = build_loss(cfg(label_smoothing=0.1), DISK)(logits, labels, positions)
    assert total.item() == pytest.approx(F.cross_entropy(logits, labels,
                                                         label_smoothing=0.1).item())
    assert list(parts) == ["cross_entropy"] and parts["cross_entropy"] == total


def test_haversine_target_is_pigeons_formula():
    logits, labels, positions = batch(DISK, [0, 5, 18, 9], jitter_km=3.0)
    total, _ = build_loss(cfg(name="haversine", tau_km=4.0), DISK)(logits, labels, positions)
    pos = positions.double().numpy()
    km = geo.pairwise_km(pos[:, 0], pos[:, 1], DISK["lat"], DISK["lon"])
    weight = np.exp(-(km - km[np.arange(4), labels.numpy()][:, None]) / 4.0)
    target = weight / weight.sum(axis=1, keepdims=True)
    expected = -(target * F.log_softmax(logits.double(), 1).numpy()).sum(1).mean()
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_haversine_spans_one_hot_to_uniform_targets():
    logits, labels, positions = batch(DISK, [0, 5, 18, 5])  # photos on their class's point
    one_hot, _ = build_loss(cfg(name="haversine", tau_km=0.001), DISK)(logits, labels,
                                                                       positions)
    assert one_hot.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    # cells lie at most ~25 km apart: at tau = 20,000 km every target weight is within 0.2 %
    uniform, _ = build_loss(cfg(name="haversine", tau_km=20000.0), DISK)(logits, labels,
                                                                         positions)
    assert uniform.item() == pytest.approx(-F.log_softmax(logits, 1).mean().item(), rel=2e-3)
    assert uniform.item() != pytest.approx(one_hot.item(), rel=1e-2)


def test_haversine_forgives_a_near_miss_more_than_a_far_one():
    centre = h3.latlng_to_cell(45.0, 5.0, 6)
    label = DISK.set_index("cell").loc[centre, "label"]
    near = DISK.set_index("cell").loc[sorted(h3.grid_ring(centre, 1))[0], "label"]
    far = DISK.set_index("cell").loc[sorted(h3.grid_ring(centre, 2))[0], "label"]
    _, labels, positions = batch(DISK, [label])
    haversine, plain = (build_loss(cfg(name=name, tau_km=5.0), DISK)
                        for name in ("haversine", "cross_entropy"))
    guesses = {}
    for guess in (near, far):
        logits = torch.zeros(1, len(DISK))
        logits[0, guess] = 5.0
        guesses[guess] = (haversine(logits, labels, positions)[0].item(),
                          plain(logits, labels, positions)[0].item())
    # -sum_i q_i log p_i = log Z - 5 q_guess, with Z the same for both guesses
    km = geo.haversine_km(*positions[0].double().numpy(), DISK["lat"], DISK["lon"])
    q = np.exp(-km / 5.0) / np.exp(-km / 5.0).sum()
    assert q[near] > 2 * q[far]
    assert guesses[near][0] - guesses[far][0] == pytest.approx(-5 * (q[near] - q[far]),
                                                               rel=1e-4)
    assert guesses[near][1] == pytest.approx(guesses[far][1])  # one-hot sees no difference


def test_haversine_gradient_is_softmax_minus_target():
    logits, labels, positions = batch(DISK, [0, 5, 18, 9], jitter_km=2.0)
    logits.requires_grad_(True)
    loss = build_loss(cfg(name="haversine", tau_km=3.0), DISK)
    loss(logits, labels, positions)[0].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert logits.grad.sum(dim=1) == pytest.approx(torch.zeros(4), abs=1e-6)
    target = torch.softmax(logits.detach(), 1) - len(labels) * logits.grad
    assert target.min() >= -1e-6 and target.sum(1) == pytest.approx(torch.ones(4), abs=1e-5)


# --- hierarchical ---------------------------------------------------------------------------


def two_by_two():
    """Two neighbouring res-5 parents with two res-6 children each, as classes."""
    first = h3.latlng_to_cell(45.0, 5.0, 5)
    second = sorted(h3.grid_ring(first, 1))[0]
    children = [c for p in (first, second) for c in sorted(h3.cell_to_children(p, 6))[:2]]
    return class_table(children, coarsest=5), first


def test_hierarchical_two_parents_by_two_children_by_hand():
    table, first = two_by_two()
    assert set(hierarchy_levels(table)) == {5}
    # softmax weights 1, 3 under the first parent and 2, 6 under the second: p = w / 12
    in_first = table["parents"].map(lambda p: p[0] == first).to_numpy()
    weights = np.empty(4)
    weights[in_first], weights[~in_first] = [1.0, 3.0], [2.0, 6.0]
    logits = torch.tensor(np.log(weights), dtype=torch.float32).repeat(2, 1)
    labels = torch.tensor([np.flatnonzero(weights == 1.0)[0], np.flatnonzero(weights == 2.0)[0]])
    _, _, positions = batch(table, labels.tolist())
    total, parts = build_loss(cfg(name="hierarchical", hierarchy_weight=0.5), table)(
        logits, labels, positions)
    # cells: -log(1/12), -log(2/12); parents: -log(4/12), -log(8/12), weighted 0.5
    assert parts["cross_entropy"].item() == pytest.approx((math.log(12) + math.log(6)) / 2)
    assert parts["hierarchy_r5"].item() == pytest.approx(0.5 * (math.log(3) + math.log(1.5)) / 2)
    assert total.item() == pytest.approx(sum(p.item() for p in parts.values()))


def test_hierarchical_with_no_weight_is_cross_entropy():
    table, _ = two_by_two()
    logits, labels, positions = batch(table, [0, 1, 2, 3, 3])
    total, parts = build_loss(cfg(name="hierarchical", hierarchy_weight=0.0,
                                  label_smoothing=0.2), table)(logits, labels, positions)
    assert total.item() == pytest.approx(F.cross_entropy(logits, labels,
                                                         label_smoothing=0.2).item())
    assert parts["hierarchy_r5"] == 0


def test_a_class_at_the_coarsest_resolution_is_its_own_group():
    parent = h3.latlng_to_cell(45.0, 5.0, 5)
    other = sorted(h3.grid_ring(parent, 2))[0]
    child = sorted(h3.cell_to_children(parent, 6))[0]
    elsewhere = sorted(h3.cell_to_children(other, 6))[0]
    table = class_table([parent, child, elsewhere], coarsest=5)
    groups = hierarchy_levels(table)[5]
    group = dict(zip(table["cell"], groups, strict=True))
    assert group[parent] == group[child] != group[elsewhere]
    # without the child every class is alone at res 5: no level, the loss is the cell loss
    alone = class_table([parent, elsewhere], coarsest=5)
    assert hierarchy_levels(alone) == {}
    logits, labels, positions = batch(alone, [0, 1])
    total, parts = build_loss(cfg(name="hierarchical"), alone)(logits, labels, positions)
    assert list(parts) == ["cross_entropy"]


def test_group_logits_are_a_stable_logsumexp_per_group():
    groups = torch.tensor([0, 2, 0, 1, 2, 2])
    # row 2: group 0 lies far below the rest, group 2 spans 200 (exp(200) overflows)
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 3.0, -2.0],
                           [-3000.0, 100.0, -2990.0, 0.0, -100.0, 8.0]])
    got = group_logits(logits, groups, 3)
    for g in range(3):
        want = torch.logsumexp(logits.double()[:, groups == g], dim=1)
        assert got[:, g].double() == pytest.approx(want, rel=1e-6)
    assert torch.isfinite(got).all()


def test_hierarchy_levels_of_a_real_table_follow_h3():
    images, cells, _ = build_index(fake_images(sequences=10), index_cfg(
        coarsest_resolution=4, finest_resolution=7, max_images_per_cell=25,
        min_images_per_cell=5))
    _, cells, _ = make_splits(images, cells, SPLIT)
    assert cells["resolution"].nunique() > 1
    levels = hierarchy_levels(cells)
    assert levels and min(levels) >= 4 and max(levels) < cells["resolution"].max()
    for r, groups in levels.items():
        key = [h3.cell_to_parent(c, r) if h3.get_resolution(c) > r else c for c in cells["cell"]]
        same_key = np.equal.outer(np.array(key), np.array(key))
        assert (same_key == np.equal.outer(groups, groups)).all()
    for name in LOSSES:
        logits, labels, positions = batch(cells, list(range(len(cells))), seed=3)
        logits.requires_grad_(True)
        total, parts = build_loss(cfg(name=name, adjacency_weight=1.0), cells)(
            logits, labels, positions, head_weight=torch.randn(len(cells), 8))
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(logits.grad).all()
        assert total.item() == pytest.approx(sum(p.item() for p in parts.values()))


# --- offset and adjacency terms -------------------------------------------------------------


def test_offset_term_trains_only_the_true_class_offset():
    loss = build_loss(cfg(offset_weight=2.0), DISK)
    logits, labels, positions = batch(DISK, [0, 5, 18], jitter_km=4.0)
    point = DISK[["lat", "lon"]].to_numpy()[labels.numpy()]
    pos = positions.double().numpy()
    true = np.stack(geo.offsets_km(pos[:, 0], pos[:, 1], point[:, 0], point[:, 1]), axis=1)
    offsets = 50 * torch.randn(3, len(DISK), 2)
    offsets[torch.arange(3), labels] = torch.tensor(true, dtype=torch.float32)

    def offset_part(offsets):
        return loss(logits, labels, positions, offsets=offsets)[1]["offset"].item()

    assert offset_part(offsets) == pytest.approx(0.0, abs=1e-6)
    off = offsets.clone()
    off[0, labels[0], 0] += 3.0   # linear beyond beta = 1 km: 3 - 0.5
    off[1, labels[1], 1] -= 0.5   # quadratic inside: 0.5 * 0.5^2
    assert offset_part(off) == pytest.approx(2.0 * (2.5 + 0.125) / 3, rel=1e-4)
    off.requires_grad_(True)
    loss(logits, labels, positions, offsets=off)[0].backward()
    trained = torch.zeros(3, len(DISK), dtype=torch.bool)
    trained[torch.arange(3), labels] = True
    assert (off.grad[~trained] == 0).all() and (off.grad[trained] != 0).any()
    assert off.grad[0, labels[0]] == pytest.approx(torch.tensor([2.0 / 3, 0.0]), abs=1e-4)


def test_offset_term_is_off_without_offsets_or_weight():
    logits, labels, positions = batch(DISK, [0, 1])
    offsets = torch.ones(2, len(DISK), 2)
    assert "offset" not in build_loss(cfg(offset_weight=1.0), DISK)(logits, labels, positions)[1]
    assert "offset" not in build_loss(cfg(), DISK)(logits, labels, positions, offsets)[1]
    # any weight above 0 turns it on, a small one too
    assert "offset" in build_loss(cfg(offset_weight=0.5), DISK)(logits, labels, positions,
                                                                 offsets)[1]


def line_of_classes(neighbours) -> pd.DataFrame:
    return pd.DataFrame({"label": range(len(neighbours)), "lat": 45.0,
                         "lon": 5.0 + 0.1 * np.arange(len(neighbours)),
                         "neighbours": neighbours})


def test_adjacency_is_the_mean_squared_distance_of_neighbouring_rows():
    table = line_of_classes([[1], [0, 2], [1], []])   # 0 - 1 - 2, and 3 alone
    assert neighbour_edges(table).tolist() == [[0, 1], [1, 2]]
    loss = build_loss(cfg(adjacency_weight=0.1), table)
    logits, labels, positions = batch(table, [0, 3])
    ce = F.cross_entropy(logits, labels).item()
    same = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [7.0, -7.0]])
    total, parts = loss(logits, labels, positions, head_weight=same)
    assert parts["adjacency"] == 0 and total.item() == pytest.approx(ce)
    weight = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0], [7.0, -7.0]], requires_grad=True)
    total, parts = loss(logits, labels, positions, head_weight=weight)
    assert parts["adjacency"].item() == pytest.approx(0.1 * (1.0 + 4.0) / 2)
    total.backward()
    assert (weight.grad[3] == 0).all() and weight.grad[1].tolist() == pytest.approx([0.1, -0.2])


def test_adjacency_is_off_without_head_weights_or_weight():
    table = line_of_classes([[1], [0]])
    logits, labels, positions = batch(table, [0, 1])
    assert set(build_loss(cfg(), table)(logits, labels, positions,
                                        head_weight=torch.randn(2, 3))[1]) == {"cross_entropy"}
    assert set(build_loss(cfg(adjacency_weight=1.0), table)(logits, labels, positions)[1]) == {
        "cross_entropy"}


def test_the_haversine_loss_is_its_only_part():
    logits, labels, positions = batch(DISK, [0, 1])
    total, parts = build_loss(cfg(name="haversine"), DISK)(logits, labels, positions)
    assert set(parts) == {"haversine"} and total.item() == parts["haversine"].item()


def test_antipodal_points_are_half_the_circumference_apart_not_nan():
    """float32 rounding takes the haversine term past 1 for some antipodal pairs (and arcsin
    near 1 leaves a few km of float32 error there)."""
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-89, 89, 2000), rng.uniform(-180, 180, 2000)
    far_lon = np.mod(lon + 360.0, 360.0) - 180.0
    km = losses.haversine_km(*(torch.tensor(v, dtype=torch.float32)
                               for v in (lat, lon, -lat, far_lon)))
    assert torch.isfinite(km).all()
    assert km.numpy() == pytest.approx(np.full(2000, math.pi * geo.EARTH_RADIUS_KM), abs=10)


def test_adjacency_without_edges_is_zero():
    table = line_of_classes([[], []])
    logits, labels, positions = batch(table, [0, 1])
    _, parts = build_loss(cfg(adjacency_weight=1.0), table)(logits, labels, positions,
                                                           head_weight=torch.randn(2, 3))
    assert parts["adjacency"] == 0


# --- devices, dtypes and errors -------------------------------------------------------------


def test_buffers_follow_to_and_half_logits_are_upcast():
    table, _ = two_by_two()
    loss = build_loss(cfg(name="hierarchical", offset_weight=1.0, adjacency_weight=1.0), table)
    assert set(dict(loss.named_buffers())) == {"points", "edges", "group_r5"}
    assert loss.state_dict() == {}   # rebuilt from the class table, not saved
    logits, labels, positions = batch(table, [0, 1, 2, 3], jitter_km=1.0)
    offsets, weight = torch.randn(4, 4, 2), torch.randn(4, 5)
    single, _ = loss(logits, labels, positions, offsets, weight)
    wide = loss.to("cpu", torch.float64)
    assert wide.points.dtype == torch.float64 and wide.group_r5.dtype == torch.int64
    double, parts = wide(logits.double(), labels, positions.double(), offsets.double(),
                         weight.double())
    # float32 degrees resolve ~0.4 m, so the offset targets agree to ~1e-3 km
    assert double.dtype == torch.float64 and double.item() == pytest.approx(single.item(),
                                                                             abs=2e-3)
    half, _ = loss.to(torch.float32)(logits.half(), labels, positions, offsets, weight)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(single.item(), rel=1e-2)
    assert losses.at_least_float32(torch.ones(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert losses.at_least_float32(torch.ones(2, dtype=torch.float64)).dtype == torch.float64
    # the class table's points are float32 whatever the table's dtype, as the model's outputs
    assert build_loss(cfg(), DISK).points.dtype == torch.float32


def test_an_unordered_table_is_a_clear_error():
    with pytest.raises(ValueError, match="^the class table must hold one row per label "
                                         r"0\.\.K-1, in label order$"):
        build_loss(cfg(), DISK.iloc[::-1])
