"""export: TorchScript and ONNX files plus the cell table, checked against eager PyTorch."""

import argparse
import logging

from geoloc.checkpoint import check_cells, load_checkpoint
from geoloc.data.cache import load_cache
from geoloc.data.splits import load_cells, load_split
from geoloc.export import export_model
from geoloc.io import atomic_dir, write_json
from geoloc.params import load_params
from geoloc.stage import run_stage

log = logging.getLogger("stages.export")

PARITY_IMAGES = 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--splits", default="data/splits")
    parser.add_argument("--cache", default="data/cache")
    parser.add_argument("--out", default="models/export")
    parser.add_argument("--metrics", default="metrics/export.json")
    args = parser.parse_args()

    opset = load_params().export.opset
    model, cells, checkpoint = load_checkpoint(args.model)
    check_cells(cells, load_cells(args.splits), args.model)
    size = checkpoint["model"]["image_size"]
    test = load_cache(args.cache, "test", size, load_split(args.splits, "test"))
    # Parity on a bounded sample: the first test images, read once into memory.
    check = test.images[test.rows["cache_row"].to_numpy()[:PARITY_IMAGES]]
    with atomic_dir(args.out) as tmp:
        figures = export_model(model, cells, size, check, tmp, opset)
    write_json(figures, args.metrics)
    log.info("exported: ONNX %.2f MB, top-1 agreement %.4f", figures["onnx_mb"],
             figures["onnx_top1_agreement"])


if __name__ == "__main__":
    run_stage(main)
