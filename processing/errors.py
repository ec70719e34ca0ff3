"""Exception types for errors a user can cause, and for work that failed.

The command line turns :class:`BadInput` into exit code 2 and :class:`WorkFailed` into exit
code 1, printing the message (never a traceback).
"""

from __future__ import annotations


class HlspError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 1


class BadInput(HlspError):
    """The user's input is wrong: a manifest, a path, a FITS file, a version. Exit code 2."""

    exit_code = 2


class ManifestError(BadInput):
    """A manifest failed validation. ``problems`` holds one ``(key path, message)`` per error."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {len(self.problems)} problem(s)"]
        for path, message in self.problems:
            lines.append(f"  {path}: {message}" if path else f"  {message}")
        super().__init__("\n".join(lines))


class WorkFailed(HlspError):
    """Processing or packaging failed for reasons other than bad input. Exit code 1."""

    exit_code = 1
