"""The ``edgejobs`` command line: one module per group of subcommands.

Each module exposes ``register(subparsers)`` that adds its commands; a command's handler is a
function ``run(args) -> int``. User errors (:class:`~edgejobs.errors.EdgeJobsError`) print one
line on stderr and exit non-zero (2 for usage and configuration errors), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from edgejobs.errors import (
    ConfigError,
    EdgeJobsError,
    OutOfResources,
    RunnerAlreadyActive,
    out_of_resources,
)
from edgejobs.logs import escape

Command = Callable[[argparse.Namespace], int]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""What ``--log-level`` accepts (in any case)."""


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one short line (no usage dump) on bad arguments."""

    def error(self, message: str) -> Any:
        self.exit(2, f"edgejobs: {message} (see --help)\n")


def _log_level(text: str) -> str:
    """An argparse ``type``: one of :data:`LOG_LEVELS`, in any case (else a usage error)."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}, got {text!r}"
        )
    return level


def _common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps a value given before the command name from being reset by the subparser.
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="edgejobs.toml to read (default: $EDGEJOBS_CONFIG or ./edgejobs.toml)",
    )
    parser.add_argument(
        "--log-format",
        choices=["human", "json"],
        default=argparse.SUPPRESS,
        help="log line format (default: human)",
    )
    # A misspelled level is a usage error, as a bad --log-format is: a warning and INFO would
    # run the command without the logging that was asked for.
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        type=_log_level,
        default=argparse.SUPPRESS,
        help="DEBUG, INFO (default), WARNING, ERROR",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every subcommand module registered)."""
    # Imported here, not at the top: the command modules import helpers from this package.
    from edgejobs.cli import admin, jobs, ops, runner, serve, tokens, types

    parser = _Parser(prog="edgejobs", description="A job runner for one machine, on SQLite.")
    _common(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for module in (runner, jobs, admin, serve, tokens, types, ops):
        module.register(subparsers, _common)
    return parser


def setup_logging(args: argparse.Namespace) -> None:
    """Configure stdlib logging from ``--log-format`` / ``--log-level``."""
    level = getattr(args, "log_level", "INFO").upper()
    fmt = getattr(args, "log_format", "human")
    from edgejobs.logs import configure

    configure(fmt, level)


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine; Ctrl-C ends it with exit code 130, quietly."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return 130


def print_json(value: Any) -> None:
    """Print a value as indented JSON (the ``--json`` output of listing commands)."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as an aligned plain-text table (control characters escaped: cells hold job
    data, and an escape sequence in an error message must not reach the terminal)."""
    text_rows = [["" if v is None else escape(str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in text_rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _not_utf8(argv: Sequence[str]) -> str | None:
    """The first argument that is not valid UTF-8 text, its bad bytes shown as ``\\xff``
    (None when every argument is text)."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return _escaped(arg)
    return None


def _escaped(arg: str) -> str:
    try:
        # Python hands over the bytes it could not decode as lone surrogates: get them back.
        raw = arg.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that did not come from the OS
        raw = arg.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "backslashreplace")
    return text if len(text) <= 60 else text[:57] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgejobs`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    # Checked once here rather than by every command: such text cannot be stored in the
    # database nor printed back, and failed deep inside whichever command got it.
    bad = _not_utf8(argv)
    if bad is not None:
        print(f"edgejobs: argument '{bad}' is not valid UTF-8 text", file=sys.stderr)
        return 2
    try:
        # The command modules import the web stack: a Ctrl-C meanwhile is no error either.
        parser = build_parser()
    except KeyboardInterrupt:
        return 130
    args = parser.parse_args(argv)
    setup_logging(args)
    handler: Command = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"edgejobs: {exc.message}", file=sys.stderr)
        return 2
    except RunnerAlreadyActive as exc:
        print(f"edgejobs: {exc.message}", file=sys.stderr)
        return 3
    except OutOfResources as exc:
        return _out_of_resources(exc)
    except EdgeJobsError as exc:
        print(f"edgejobs: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `edgejobs jobs list --json | head`: the reader left; exit quietly, and point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        # A limit of the service (LimitNOFILE, TasksMax, MemoryMax) reached, at start or on
        # the way, is no bug of edgejobs: one line that says which, not a traceback.
        shortage = out_of_resources(exc)
        if shortage is None:
            raise
        return _out_of_resources(shortage)


def _out_of_resources(exc: OutOfResources) -> int:
    print(
        f"edgejobs: this process is out of {exc.what}; raise the limit it runs under"
        " (LimitNOFILE, TasksMax, MemoryMax) or lower its load",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
