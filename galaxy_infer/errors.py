"""Errors that become ``error`` rows in the catalog rather than stopping a run."""


class InputError(Exception):
    """An input object that cannot be classified; the message is the row's ``error`` reason."""


class ModelError(Exception):
    """A model file that does not fit this program; raised before any work starts."""


TRANSIENT_PREFIX = "cannot read now: "
"""Starts every reason that says the bytes could not be fetched (permission, I/O, network), not that they are bad."""


class TransientInputError(InputError):
    """The object could not be read this time; another try may succeed. The nightly ingest retries it."""

    def __init__(self, reason: str) -> None:
        super().__init__(TRANSIENT_PREFIX + reason)


def is_transient(reason: str | None) -> bool:
    return bool(reason) and reason.startswith(TRANSIENT_PREFIX)


class StorageError(Exception):
    """The store behind an input or output cannot be reached or refuses our credentials: nothing can run."""
