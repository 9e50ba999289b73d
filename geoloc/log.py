"""One logging setup for stages and the CLI; the level comes from GEOLOC_LOG_LEVEL."""

import logging
import os


class OncePerRun(logging.Filter):
    """Lets each warning through once: a stage that runs a step several times (the split
    stage splits once per protocol) would otherwise repeat the same advice."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def setup_logging() -> None:
    level = os.environ.get("GEOLOC_LOG_LEVEL", "INFO").upper()
    root = logging.getLogger()
    # basicConfig does nothing where a handler is set already (a test's): leave those alone
    configured = bool(root.handlers)
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not configured:
        for handler in root.handlers:
            handler.addFilter(OncePerRun())
    # The ONNX exporter narrates each optimisation pass at INFO.
    for chatty in ("onnx_ir", "onnxscript"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
