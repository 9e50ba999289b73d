"""Errors a user can fix: stages and the CLI print them as one line, without a traceback."""


class GeolocError(Exception):
    """Something the user can fix; the message names what is wrong and what to do."""
