"""Object stores: a local directory (embedded default) or S3 through dagster-aws's S3Resource.

Both store whole objects atomically: a reader sees either the previous object or the new one,
never a half-written file (local: write to a temp file, fsync, rename; S3: PUT is atomic, and
boto3 sends a checksum of the body, so a body cut short by a dying connection is refused).
Conditional writes (`put_if_absent`, `put_if_match`: what the serving index's compare-and-swap
publish is made of) are S3's `If-None-Match: *` / `If-Match: <etag>` (SeaweedFS honours both, see
tests/resources/test_s3_store.py), and locally a hard link that refuses an existing name / a lock
file held around the check and the rename.
S3 errors (endpoint down, refused, timed out after the client's retries) surface as one
`ObjectStoreError` naming the operation, the s3:// key and the endpoint.
"""

import fcntl
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from bggen_assets.core.keys import check_key
from bggen_assets.core.store import ObjectNotFound, StoreUnavailable, Tagged

# S3 error codes of a conditional write that lost: the precondition failed, or a concurrent
# conditional write to the same key was in flight (409); both mean "not written, look again".
_LOST_CONDITION = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class ObjectStoreError(StoreUnavailable):
    """The store could not be reached or refused an operation (message says which and why)."""


class ObjectStore(ConfigurableResource):
    """Interface shared by the stores (they satisfy `bggen_assets.core.store.ObjectStore`, the
    protocol core code takes). Keys are validated: no key is built from unchecked input."""

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def list_keys(self, prefix: str) -> Iterator[str]:
        raise NotImplementedError

    def get_tagged(self, key: str) -> Tagged:
        raise NotImplementedError

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        raise NotImplementedError

    def put_if_match(self, key: str, data: bytes, tag: str, content_type: str = "application/octet-stream") -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class LocalObjectStore(ObjectStore):
    """Objects as files under `root`."""

    root: str = "bggen_data/objects"

    def _path(self, key: str) -> Path:
        return Path(self.root) / check_key(key)

    def _write_temp(self, path: Path, data: bytes) -> str:
        """The bytes in a synced temp file next to `path` (its name is never listed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return tmp

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _tag(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def get_tagged(self, key: str) -> Tagged:
        data = self.get_bytes(key)
        return Tagged(data, self._tag(data))

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic, and refuses a name that exists: create-if-absent
            return True
        except FileExistsError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)

    @contextmanager
    def _locked(self, path: Path):
        """An exclusive lock on the key across threads and processes (flock on a lock file beside
        it): writers that check-then-replace under it cannot interleave."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent / f".lock-{path.name}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def put_if_match(self, key: str, data: bytes, tag: str, content_type: str = "application/octet-stream") -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            with self._locked(path):
                try:
                    current = path.read_bytes()
                except FileNotFoundError:
                    return False
                if self._tag(current) != tag:
                    return False
                os.replace(tmp, path)  # readers, who take no lock, see the old object or the new one
                return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> Iterator[str]:
        base = Path(self.root)
        start = base / prefix.rstrip("/") if prefix else base
        if not start.exists():
            return
        for path in sorted(start.rglob("*") if start.is_dir() else [start]):
            if path.is_file() and not path.name.startswith((".tmp-", ".lock-")):
                yield path.relative_to(base).as_posix()

    def describe(self) -> str:
        return f"local:{Path(self.root).resolve()}"


class S3ObjectStore(ObjectStore):
    """Objects in an S3 bucket (AWS, SeaweedFS, MinIO: any endpoint_url through `s3`)."""

    bucket: str
    prefix: str = ""
    s3: S3Resource
    create_bucket: bool = False

    _client = PrivateAttr(default=None)

    def _c(self):
        if self._client is None:
            self._client = self.s3.get_client()
            if self.create_bucket:
                self._ensure_bucket()
        return self._client

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:  # another process created it first
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise ObjectStoreError(f"S3 create bucket {self.bucket!r} at {self.s3.endpoint_url or 'AWS'} "
                                           f"failed: {exc}") from exc
        except Exception as exc:
            raise ObjectStoreError(f"S3 endpoint {self.s3.endpoint_url or 'AWS'} unreachable while checking bucket "
                                   f"{self.bucket!r}: {exc}") from exc

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix.strip('/')}/{key}" if self.prefix.strip("/") else key

    def _fail(self, op: str, key: str, exc: Exception) -> ObjectStoreError:
        where = f" at {self.s3.endpoint_url}" if self.s3.endpoint_url else ""
        return ObjectStoreError(f"S3 {op} s3://{self.bucket}/{self._key(key) if key else self.prefix}{where} failed: "
                                f"{type(exc).__name__}: {exc}")

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        full = self._key(key)  # an unchecked key is refused as such, before any request
        try:
            self._c().put_object(Bucket=self.bucket, Key=full, Body=data, ContentType=content_type)
        except Exception as exc:  # botocore raises many types; callers need one clear error
            raise self._fail("put", key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        return self.get_tagged(key).data

    def get_tagged(self, key: str) -> Tagged:
        from botocore.exceptions import ClientError

        full = self._key(key)
        try:
            got = self._c().get_object(Bucket=self.bucket, Key=full)
            return Tagged(got["Body"].read(), got["ETag"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFound(key) from None
            raise self._fail("get", key, exc) from exc
        except Exception as exc:
            raise self._fail("get", key, exc) from exc

    def _put_conditional(self, op: str, key: str, data: bytes, content_type: str, **condition) -> bool:
        from botocore.exceptions import ClientError

        full = self._key(key)
        try:
            self._c().put_object(Bucket=self.bucket, Key=full, Body=data, ContentType=content_type, **condition)
            return True
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if error.get("Code") in _LOST_CONDITION or status in ("412", "409"):
                return False
            raise self._fail(op, key, exc) from exc
        except Exception as exc:
            raise self._fail(op, key, exc) from exc

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        return self._put_conditional("put-if-absent", key, data, content_type, IfNoneMatch="*")

    def put_if_match(self, key: str, data: bytes, tag: str, content_type: str = "application/octet-stream") -> bool:
        return self._put_conditional("put-if-match", key, data, content_type, IfMatch=tag)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        full = self._key(key)
        try:
            self._c().head_object(Bucket=self.bucket, Key=full)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._fail("head", key, exc) from exc
        except Exception as exc:
            raise self._fail("head", key, exc) from exc

    def delete(self, key: str) -> None:
        full = self._key(key)
        try:
            self._c().delete_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            raise self._fail("delete", key, exc) from exc

    def list_keys(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix) if prefix else self.prefix.strip("/")
        strip = len(self.prefix.strip("/")) + 1 if self.prefix.strip("/") else 0
        try:
            pages = list(self._c().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full))
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][strip:]

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}"
