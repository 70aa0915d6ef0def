"""The one exception type for user errors.

Anything the user can fix (a missing file, a malformed manifest, a wrong shape, a device that is not
there) raises EdgemmError with a one-line message that names the thing and what was expected. The CLI
turns it into that line on stderr and exit code 1; everything else is a bug and keeps its traceback.
"""


class EdgemmError(Exception):
    """A problem with the user's input or environment, reported as one clear line."""

