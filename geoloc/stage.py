"""What every stage script shares: logging, params, and one-line errors instead of tracebacks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from geoloc.errors import GeolocError
from geoloc.log import setup_logging

log = logging.getLogger("geoloc.stage")


def run_stage(main: Callable[[], None]) -> None:
    setup_logging()
    try:
        main()
    except GeolocError as exc:
        log.error("%s", exc)
        sys.exit(2)
