"""Told when the WAL file changes, instead of asking ten times a second.

Every commit to a WAL database, by any process, writes to its ``-wal`` file. On Linux, inotify
reports those writes through a file descriptor the event loop can wait on, so an idle runner
learns of another process's commit (a CLI submit, a cancel) at once, and its writer thread
sleeps instead of waking every 100 ms to look at ``PRAGMA data_version``. On a machine like the
ones we measured, every wake-up of an idle thread costs 0.1–0.5 ms of CPU whatever the thread
then does, so wake-ups are what an idle process spends. The writer arms the watch only while
it is idle (``db.Writer``): its own commits would otherwise wake it and the loop for nothing.

Where inotify is unavailable (not Linux, no ``libc``, the watch limit reached, an event loop
without ``add_reader``) :func:`open_watch` returns None and the writer polls as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("edgejobs.store")

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_READ_SIZE = 4096


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # Once per process, and from the symbols already loaded: find_library("c") runs ldconfig
    # (~3 ms) and every store open would have paid it.
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


class WalWatch:
    """An inotify descriptor that becomes readable when the watched file is written to."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        """The descriptor to wait on (readable after a write to the file)."""
        return self._fd

    def drain(self) -> None:
        """Read every pending event (they say nothing beyond "written", so discard them)."""
        with contextlib.suppress(OSError):  # BlockingIOError: nothing (more) to read
            while os.read(self._fd, _READ_SIZE):
                pass

    def close(self) -> None:
        """Stop watching."""
        with contextlib.suppress(OSError):
            os.close(self._fd)


def open_watch(path: Path) -> WalWatch | None:
    """Watch ``path`` (an existing file) for writes; None where that is not possible."""
    libc = _libc()
    if libc is None or not path.exists():
        return None
    fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        log.debug("inotify unavailable (%s): polling for other processes' commits", _errno())
        return None
    if libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        log.debug("cannot watch %s (%s): polling for other processes' commits", path, _errno())
        os.close(fd)
        return None
    return WalWatch(fd)


def _errno() -> str:
    return os.strerror(ctypes.get_errno())
