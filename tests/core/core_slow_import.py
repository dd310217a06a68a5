"""A handler module whose import takes ``CORE_SLOW_IMPORT_S`` seconds, after it wrote the file
``CORE_SLOW_IMPORT_MARK``: a runner that imports it is known to be starting (the runner
imports every handler as it starts)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

if os.environ.get("CORE_SLOW_IMPORT_MARK"):
    Path(os.environ["CORE_SLOW_IMPORT_MARK"]).write_text("importing")
time.sleep(float(os.environ.get("CORE_SLOW_IMPORT_S", "0")))


async def run(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Return at once."""
    return {"ok": True}
