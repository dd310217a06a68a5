"""Fixtures of the chaos suite: the folder of helper modules (``chaos_handlers``,
``chaos_support``) on ``sys.path`` so that test modules, in-process runners and runner
subprocesses can all import them."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
