"""The runner: job-type registry, handler execution, the worker pool and the tick loop (no SQL)."""
