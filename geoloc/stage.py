"""What every stage script shares: logging, params, and one-line errors instead of tracebacks."""

from __future__ import annotations

import errno
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
    except OSError as exc:  # an unwritable folder, a full disk: the user's to fix, no traceback
        log.error("%s", describe_os_error(exc))
        sys.exit(2)


def describe_os_error(exc: OSError) -> str:
    # A failed write() carries no file name; a failed open() or mkdir() does.
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the device{where}: free some space (see `geoloc purge`) or "
                f"lower fetch.max_disk_gb, then run the stage again")
    return f"{exc.strerror or exc}{where}"
