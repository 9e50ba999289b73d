"""One logging setup for stages and the CLI; the level comes from GEOLOC_LOG_LEVEL."""

import logging
import os


def setup_logging() -> None:
    level = os.environ.get("GEOLOC_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # The ONNX exporter narrates each optimisation pass at INFO.
    for chatty in ("onnx_ir", "onnxscript"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
