"""The single exception type raised for every data-loading problem."""


class DataError(Exception):
    """A dataset could not be loaded; the message names the problem and the fix."""
