"""Fixtures of the operations tests: real database files in ``tmp_path`` and the helper module
``ops_support`` on ``sys.path`` (tests are imported with ``--import-mode=importlib``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger back as it was after a test that called ``edgejobs.logs.configure``."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)
