import sys
from typing import Callable


class UserFacingError(Exception):
    """A problem the user can fix, reported as one sentence without a traceback."""


def exit_status(work: Callable[[], object]) -> int:
    """A command's exit status: 0 once `work` has run; 2, the problem said on stderr, when it
    raises a UserFacingError."""
    try:
        work()
    except UserFacingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
