"""export: a snapshot folder that predicts without the training code (TorchScript and ONNX
models, cell table, preprocessing spec, the training photos' cities that answers are named
after, params, metrics, model card, and the feature index of
the retrieval mode unless export.retrieval_index is false), checked against eager PyTorch and
timed on this CPU."""

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from geoloc.checkpoint import check_cells, load_checkpoint
from geoloc.data.cities import city_points
from geoloc.data.features import load_features
from geoloc.data.preprocess import read_squares
from geoloc.data.splits import load_cells, load_split
from geoloc.errors import GeolocError
from geoloc.export import add_retrieval, export_model, latency_figures
from geoloc.io import atomic_dir, folder_bytes, write_json
from geoloc.model_card import model_card
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.export")

PARITY_IMAGES = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--features", default="data/features",
                        help="the features stage's (its features.onnx ships with the index)")
    parser.add_argument("--retrieval", default="models/retrieval.npz",
                        help="the evaluate stage's feature index")
    parser.add_argument("--recipe", default="models/recipe.json",
                        help="the evaluate stage's mode, temperatures and settings")
    parser.add_argument("--out", default="models/export")
    parser.add_argument("--metrics", default="metrics/export.json")
    parser.add_argument("--eval", default="metrics/eval.json", help="the evaluate stage's")
    parser.add_argument("--data", default="metrics/data.json", help="the index stage's")
    args = parser.parse_args()

    params = load_params()
    model, model_cells, checkpoint = load_checkpoint(args.model)
    # The split's table, once it is known to be the model's: it has the parents too.
    cells = load_cells(args.splits)
    check_cells(model_cells, cells, args.model)
    size = checkpoint["model"]["image_size"]
    # Parity on a bounded sample: the first test photos that decode (the features stage's
    # rows), decoded as the predictor decodes them.
    test = load_features(args.features, "test", load_split(args.splits, "test"),
                         params.features).rows.head(PARITY_IMAGES)
    check = np.stack([read_squares(Path(args.raw) / path, (size,))[0] for path in test["path"]])
    evaluation = json.loads(Path(args.eval).read_text())
    data = json.loads(Path(args.data).read_text())
    if not Path(args.recipe).exists():
        raise GeolocError(f"{args.recipe} not found: run the evaluate stage (dvc repro evaluate)")
    spec = json.loads(Path(args.recipe).read_text())
    spec["cities"] = city_points(load_split(args.splits, "train"))
    with atomic_dir(args.out) as tmp:
        if params.export.retrieval_index:
            spec["retrieval"] = add_retrieval(tmp, Path(args.features), Path(args.retrieval),
                                              params.features.size, params.panoramas)
        figures = export_model(model, cells, size, check, tmp, params.export.opset, spec)
        write_json(checkpoint["params"], tmp / "params.json")
        write_json({"evaluate": evaluation, "export": figures}, tmp / "metrics.json")
        (tmp / "MODEL_CARD.md").write_text(model_card(checkpoint["params"],
                                                      checkpoint["summary"], evaluation, data,
                                                      figures, spec))
        figures.update(latency_figures(model, tmp, check))
        figures["snapshot_mb"] = folder_bytes(tmp) / 1e6   # what a server loads and ships
    write_json(figures, args.metrics)
    log.info("exported: ONNX %.2f MB, top-1 agreement %.4f; ms per image at batch 1: eager "
             "%.2f, TorchScript %.2f, ONNX Runtime %.2f", figures["onnx_mb"],
             figures["onnx_top1_agreement"], figures["latency_ms_eager_batch1"],
             figures["latency_ms_torchscript_batch1"], figures["latency_ms_onnx_batch1"])


if __name__ == "__main__":
    run_stage(main)
