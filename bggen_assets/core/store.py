"""The object store as core code sees it: whole objects under checked keys.

A protocol, so that core modules (the serving index, the steps) can take a store without
importing `resources`; `resources.object_store`'s local and S3 stores satisfy it.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Protocol, runtime_checkable


class ObjectNotFound(KeyError):
    """No object under the key (the key is the exception's argument)."""


class StoreUnavailable(RuntimeError):
    """The store could not be reached or refused the operation (not: the object is absent).
    Serving treats it as an outage: it answers from what it holds and retries in the background."""


class Tagged(NamedTuple):
    """An object's bytes and its tag: what a conditional write names to say "only if unchanged"
    (the ETag on S3, a content digest in the local store)."""

    data: bytes
    tag: str


@runtime_checkable
class ObjectStore(Protocol):
    """Whole objects, written atomically: a reader sees the previous object or the new one."""

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; raises ObjectNotFound when there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self, prefix: str) -> Iterator[str]: ...

    def get_tagged(self, key: str) -> Tagged:
        """The object's bytes and tag; raises ObjectNotFound when there is none."""
        ...

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        """Create the object only if no object is under the key (S3 `If-None-Match: *`): True when
        this call created it, False when one was there (it is left as it was)."""
        ...

    def put_if_match(self, key: str, data: bytes, tag: str, content_type: str = "application/octet-stream") -> bool:
        """Replace the object only if it is still the one `tag` names (S3 `If-Match`): True when
        replaced, False when another writer changed or removed it in between."""
        ...
