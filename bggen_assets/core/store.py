"""The object store as core code sees it: whole objects under checked keys.

A protocol, so that core modules (the serving index, the steps) can take a store without
importing `resources`; `resources.object_store`'s local and S3 stores satisfy it.
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable


class ObjectNotFound(KeyError):
    """No object under the key (the key is the exception's argument)."""


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
