"""Errors that become ``error`` rows in the catalog rather than stopping a run."""


class InputError(Exception):
    """An input object that cannot be classified; the message is the row's ``error`` reason."""


class ModelError(Exception):
    """A model file that does not fit this program; raised before any work starts."""
