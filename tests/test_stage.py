"""Stages stop on a disk or folder problem with one line, no traceback, nothing half-written."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geoloc.io import atomic_dir, atomic_path
from geoloc.stage import run_stage


def stops_with(main, caplog) -> str:
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run_stage(main)
    assert exit_info.value.code == 2
    (record,) = caplog.records
    return record.getMessage()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_message(caplog):
    def write_to_full_disk():
        with open("/dev/full", "wb") as f:
            f.write(b"\xff\xd8" * 100_000)

    message = stops_with(write_to_full_disk, caplog)
    assert message.startswith("no space left on the device: free some space")
    assert "geoloc purge" in message


def test_an_unwritable_data_folder_is_one_message(tmp_path, caplog):
    (tmp_path / "data").write_text("a file where a folder should be")

    def fetch_into_it():
        with atomic_dir(tmp_path / "data/raw/batch01") as tmp, atomic_path(tmp / "m") as part:
            part.write_text("never")

    message = stops_with(fetch_into_it, caplog)
    assert str(tmp_path / "data") in message and "Traceback" not in message
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_each_warning_is_logged_once_a_run():
    """The split stage splits once per protocol: its advice on block_resolution auto came
    three times. A warning repeated word for word is logged once; information every time."""
    script = """
import logging
from geoloc.log import setup_logging
setup_logging()
log = logging.getLogger("geoloc.data.splits")
for protocol in ("sequence", "spatial", "city"):
    log.warning("split.block_resolution auto is %d", 9)
    log.info("split by %s", "drive")
log.warning("split.block_resolution auto is %d", 10)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, env={**os.environ, "GEOLOC_LOG_LEVEL": "INFO"})
    lines = result.stderr.splitlines()
    assert sum("auto is 9" in line for line in lines) == 1
    assert sum("auto is 10" in line for line in lines) == 1
    assert sum("split by drive" in line for line in lines) == 3
