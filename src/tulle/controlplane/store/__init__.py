"""Resource stores: one `ResourceStore` protocol, memory / SQLite / PostgreSQL backends.

Objects are Kubernetes-shaped dicts; `resourceVersion` is a store-wide revision used for
optimistic concurrency and for watch.  Open one with `await open_store(url)`.
"""

from tulle.controlplane.store.errors import (
    AlreadyExistsError,
    BatchError,
    ConflictError,
    ExpiredError,
    InvalidObjectError,
    NotFoundError,
    StoreError,
)
from tulle.controlplane.store.factory import open_store
from tulle.controlplane.store.labels import SelectorError
from tulle.controlplane.store.protocol import (
    BatchOp,
    EventType,
    LabelSelector,
    Obj,
    ResourceStore,
    WatchEvent,
)

__all__ = [
    "AlreadyExistsError",
    "BatchError",
    "BatchOp",
    "ConflictError",
    "EventType",
    "ExpiredError",
    "InvalidObjectError",
    "LabelSelector",
    "NotFoundError",
    "Obj",
    "ResourceStore",
    "SelectorError",
    "StoreError",
    "WatchEvent",
    "open_store",
]
