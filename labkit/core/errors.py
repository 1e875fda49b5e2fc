"""Errors that reach the user as a one-line message instead of a traceback."""
from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (spec, command line, files on disk).

    The CLI prints ``str(error)`` without a traceback and exits with ``exit_code``.
    The message must name the problem and the fix.
    """

    exit_code = 2


class DamagedFile(UserError):
    """A file labkit wrote (or should have written) cannot be read: truncated, edited,
    not JSON, or of another kind. The message names the file and what to do."""


class DatasetNotFound(UserError):
    """A dataset's files are not where labkit looks for them, and download is off."""


class RunFailed(Exception):
    """The run cannot go on (non-finite loss, …); the reason goes to the status file."""
