class UserFacingError(Exception):
    """A problem the user can fix, reported as one sentence without a traceback."""
