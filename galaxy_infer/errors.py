"""Errors that become ``error`` rows in the catalog rather than stopping a run.

Every error row has a *kind* set by the code that raised it (``ErrorKind``): control flow
(the nightly ingest retries ``unreadable-now``) and summaries use the kind; the message is for people.
"""
from enum import StrEnum


class ErrorKind(StrEnum):
    """Why an input object gave an ``error`` row; stored in the catalog's ``error_kind`` column."""

    CORRUPT = "corrupt"
    """The bytes are not a readable cutout (bad format, truncated, no image data)."""
    UNSUPPORTED = "unsupported"
    """Readable, but in a layout the model cannot take (bands, dimensions, dtype, mode)."""
    NOT_FOUND = "not-found"
    """The named object does not exist (or is a directory, link to nothing, device)."""
    UNREADABLE_NOW = "unreadable-now"
    """The bytes could not be fetched this time (permission, I/O, network); another try may succeed."""
    TOO_LARGE = "too-large"
    """Over a documented limit (pixels, decoded bytes, decompressed bytes), decided before the bytes are read."""
    OUTSIDE_INPUT = "outside-input"
    """The file refers to data outside itself (HDF5 external storage, links, virtual sources)."""
    ID_COLLISION = "id-collision"
    """Two inputs of one run (or a run and the ledger) would share an object id."""
    WORKER_DIED = "worker-died"
    """The process decoding this object died on it, every try."""
    MODEL_OUTPUT = "model-output"
    """The model gave non-finite numbers for this object."""


class InputError(Exception):
    """An input object that cannot be classified; the message is the row's ``error`` reason."""

    kind: ErrorKind = ErrorKind.CORRUPT

    def __init__(self, reason: str, kind: ErrorKind | None = None) -> None:
        super().__init__(reason)
        if kind is not None:
            self.kind = kind


class ModelError(Exception):
    """A model file that does not fit this program; raised before any work starts."""


TRANSIENT_PREFIX = "cannot read now: "
"""Starts every reason that says the bytes could not be fetched (permission, I/O, network), not that they are bad."""


class TransientInputError(InputError):
    """The object could not be read this time; another try may succeed. The nightly ingest retries it."""

    kind = ErrorKind.UNREADABLE_NOW

    def __init__(self, reason: str) -> None:
        super().__init__(TRANSIENT_PREFIX + reason)


class StoreUnreachable(TransientInputError):
    """The store did not answer at all, after every retry: a task's reads not yet started fail at once with it."""


def is_transient(reason: str | None) -> bool:
    return bool(reason) and reason.startswith(TRANSIENT_PREFIX)


class StorageError(Exception):
    """The store behind an input or output cannot be reached or refuses our credentials: nothing can run."""
