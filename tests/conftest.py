"""Shared pytest set-up.

Nothing may reach a model hub from the tests. The storage backends are chosen by
BGGEN_TEST_BACKEND: `embedded` (default: SQLite + a local object store in tmp) or `services`
(MariaDB + SeaweedFS S3, started by the fixtures in tests/services.py); CI runs the suite on both.

What each pass runs (the rest is deselected, and the summary line counts it; nothing is skipped):
- embedded: every test but those marked `services`;
- services: the tests that touch a real service: those marked `services` (one service's own
  tests), and those marked `backend`, which is given to every test that uses a fixture whose value
  the pass chooses (`store`, `metadata_db`, and what is built on them). A test that uses neither
  does the same work in both passes, so only the embedded pass runs it.
A test that asks for a real service's fixture (`s3_store`, `mysql_db`, `redis_url`, ...) is
marked `services` by that alone.
"""
import os
import sys
from pathlib import Path

# Forced, not defaulted: no test may reach a model hub, whatever the caller's environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["YOLO_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import ipaddress  # noqa: E402
import socket  # noqa: E402

import pytest  # noqa: E402

_connect = socket.socket.connect


def _loopback_only_connect(self, address):
    """Tests talk to 127.0.0.1 / localhost only: any other address fails at once, so a code path
    that would download weights fails loudly instead of passing on a machine with internet."""
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        if host != "localhost":
            try:
                ok = ipaddress.ip_address(host).is_loopback
            except ValueError:
                ok = False
            if not ok:
                raise ConnectionRefusedError(f"tests may only connect to loopback, not {host!r}")
    return _connect(self, address)


socket.socket.connect = _loopback_only_connect

sys.path.insert(0, str(Path(__file__).parent))

BACKEND = os.environ.get("BGGEN_TEST_BACKEND", "embedded")
if BACKEND not in ("embedded", "services"):
    raise pytest.UsageError(f"BGGEN_TEST_BACKEND must be 'embedded' or 'services', got {BACKEND!r}")

pytest_plugins = ["services"]


# Fixtures whose value BGGEN_TEST_BACKEND chooses (a local dir / SQLite, or SeaweedFS / MariaDB).
BACKEND_FIXTURES = frozenset({"store", "metadata_db"})
# Fixtures of one real service (tests/services.py): a test asking for one needs the services pass.
SERVICE_FIXTURES = frozenset({"seaweedfs", "s3_store", "mariadb_url", "mysql_database", "mysql_db", "private_mariadb",
                              "redis_url"})


def pytest_configure(config):
    config.addinivalue_line("markers", "services: needs a real service (MariaDB, SeaweedFS, Redis, RabbitMQ); "
                                       "runs in the BGGEN_TEST_BACKEND=services pass only")
    config.addinivalue_line("markers", "backend: uses the store / metadata DB the pass chooses (set by conftest "
                                       "from the test's fixtures); runs in both passes")


def pytest_collection_modifyitems(config, items):
    """Each pass keeps what it is for (module docstring) and deselects the rest."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & SERVICE_FIXTURES and item.get_closest_marker("services") is None:
            item.add_marker(pytest.mark.services)
        if used & BACKEND_FIXTURES:
            item.add_marker(pytest.mark.backend)
    if BACKEND == "services":
        def wanted(item):
            return item.get_closest_marker("services") is not None or item.get_closest_marker("backend") is not None
    else:
        def wanted(item):
            return item.get_closest_marker("services") is None
    keep = [i for i in items if wanted(i)]
    dropped = [i for i in items if not wanted(i)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def store(tmp_path, request):
    """The object store under test: local dir, or a fresh prefix in the SeaweedFS bucket."""
    if BACKEND == "services":
        return request.getfixturevalue("s3_store")
    from resources.object_store import LocalObjectStore

    return LocalObjectStore(root=str(tmp_path / "objects"))


@pytest.fixture
def metadata_db(tmp_path, request):
    """The metadata DB under test: a SQLite file, or a fresh MariaDB database."""
    if BACKEND == "services":
        return request.getfixturevalue("mysql_db")
    from resources.metadata_db import MetadataDB

    return MetadataDB(url=f"sqlite:///{tmp_path / 'bggen.db'}")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """A small sample catalog (2 merchants, 8 products each, with the bad rows), drawn once."""
    from bggen_assets.sample_catalog import generate_sample_catalog

    out = tmp_path_factory.mktemp("sample")
    generate_sample_catalog(out, products_per_merchant=8, image_size=480)
    return out


@pytest.fixture
def creative_config(sample_dir):
    from resources.creative_config import CreativeConfig

    # a smaller canvas keeps the tests fast; geometry is resolution-independent
    return CreativeConfig(feeds_dir=str(sample_dir / "feeds"), placements_path=str(sample_dir / "placements.yaml"),
                          prompts_path=str(sample_dir / "prompts.yaml"), canvas_pixels=120_000)


@pytest.fixture
def pipeline_resources(store, metadata_db, creative_config):
    from resources.generator import GeneratorResource
    from resources.io_manager import ManifestIOManager
    from resources.masker import MaskerResource
    from resources.miss_queue import DbMissQueue

    return {
        "store": store,
        "metadata_db": metadata_db,
        "miss_queue": DbMissQueue(metadata_db=metadata_db),
        "creative_config": creative_config,
        "masker": MaskerResource(),
        "generator": GeneratorResource(),
        "manifest_io_manager": ManifestIOManager(store=store),
    }
