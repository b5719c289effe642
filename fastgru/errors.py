"""The exceptions fastgru raises for files and graphs it cannot read."""


class FormatError(ValueError):
    """A file, byte string or graph is not a model fastgru can read; the message says why."""
