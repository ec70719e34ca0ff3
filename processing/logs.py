"""Where log records and library warnings go.

The console shows this package's own messages (loggers ``release.*`` and ``processing.*``)
and any library's errors; everything else (jwst's step logs, crds, astropy and numpy
warnings) goes only to the log file of the command (``WORKDIR/logs/<command>-<time>.log``),
so a user reads a short report and the detail is kept. ``-v`` shows everything on the
console too. Python warnings are routed through logging (``py.warnings``), never printed.
Nothing here runs at import time: the command calls :func:`setup_console`, and each
worker process :func:`setup_worker`.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

#: Loggers whose INFO messages a user sees on the console.
OWN_LOGGERS = ("release", "processing")
FILE_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class _ConsoleFilter(logging.Filter):
    """Our loggers at the handler's level; other libraries only from ERROR up."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.ERROR:
            return True
        return record.name.split(".")[0] in OWN_LOGGERS


def setup_console(console, verbose: bool = False) -> None:
    """One console handler on the root logger (idempotent); warnings captured into logging.

    On a terminal, rich formats the records; otherwise (CI, a pipe, a file) they are printed
    as plain lines, never wrapped, so a long path stays on one line.
    """
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_hlsp_console", False)]:
        root.removeHandler(h)
    if console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler._hlsp_console = True  # type: ignore[attr-defined]
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.addFilter(_ConsoleFilter(verbose))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.captureWarnings(True)


def attach_log_file(folder: Path, command: str) -> Path:
    """Send every record (all libraries, all levels from INFO) to a new log file in ``folder``
    (a folder of the work folder: a symbolic link out of it is refused, never written through)."""
    from processing.fileio import inside

    folder = inside(Path(folder), Path(folder).parent, "the log folder")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{command}-{stamp}-{os.getpid()}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    return path


def setup_worker() -> None:
    """In a worker process: no console output at all (records go to the task's log file,
    which the task attaches); Python warnings are captured into logging too."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    # a root logger without handlers would print WARNINGs to stderr (logging.lastResort)
    root.addHandler(logging.NullHandler())
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
