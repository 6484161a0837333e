"""The store's error taxonomy.

Every backend raises exactly these, so the API layer maps them to HTTP once (404, 409, 409, 410)
whatever the store is.  They all derive from `StoreError`.  A refused `batch` raises
`BatchError`, which names the operation that failed and carries one of the others.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error a `ResourceStore` raises on purpose."""


class NotFoundError(StoreError):
    """The object does not exist (get, update, update_status, delete)."""


class AlreadyExistsError(StoreError):
    """`create` of an object whose kind/namespace/name is taken."""


class ConflictError(StoreError):
    """A `resourceVersion` precondition failed: someone else wrote the object since it was read.

    `current` holds the stored resourceVersion (also in the message); the caller re-reads,
    re-applies its change and retries.
    """

    def __init__(self, message: str, current: str | None = None) -> None:
        super().__init__(message)
        self.current = current


class ExpiredError(StoreError):
    """A watch asked for changes older than the retained change log (Kubernetes' 410 Gone).

    The caller re-lists and watches from the revision the list returns.
    """


class InvalidObjectError(StoreError, ValueError):
    """The object lacks what the store itself needs: `kind` and `metadata.name` (strings).

    The store validates nothing else; specs are the API layer's business.
    """


class BatchError(StoreError):
    """A `batch` was refused as a whole because operation `index` failed with `error`.

    Nothing of the batch was stored.  `error` is the operation's own refusal
    (`NotFoundError`, `AlreadyExistsError`, `ConflictError`, `InvalidObjectError`); for a key
    given twice in one batch it is an `InvalidObjectError` and `duplicate_of` is the index of
    the operation that named the key first.
    """

    def __init__(self, index: int, error: StoreError, duplicate_of: int | None = None) -> None:
        super().__init__(f"operation {index}: {error}")
        self.index = index
        self.error = error
        self.duplicate_of = duplicate_of
