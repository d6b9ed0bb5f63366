"""The UI loads: dagster-webserver with workspace.yaml on a free loopback port, asked over GraphQL."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterInstance

from sensors.catalog import feed_fingerprints
from resources.creative_config import CreativeConfig

REPO = Path(__file__).resolve().parents[2]

QUERY = """
{
  repositoriesOrError { ... on RepositoryConnection { nodes {
    name
    sensors { name }
    schedules { name }
  } } }
  assetNodes {
    assetKey { path }
    partitionKeysByDimension { name partitionKeys }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_webserver_shows_assets_sensors_schedule_and_partitions(tmp_path, sample_dir):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "sample").symlink_to(sample_dir, target_is_directory=True)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "BGGEN_DATA_DIR": str(data_dir)}
    # the partitions the sample catalog's sensor tick would add
    cfg = CreativeConfig(feeds_dir=str(sample_dir / "feeds"))
    keys = feed_fingerprints(cfg)[0]
    merchants = sorted({m for m, _ in keys})
    categories = sorted({c for _, c in keys})
    instance = DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("merchant", merchants)
    instance.add_dynamic_partitions("category", categories)
    instance.dispose()

    port = _free_port()
    exe = Path(sys.executable).parent / "dagster-webserver"
    proc = subprocess.Popen([str(exe), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, data = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"dagster-webserver exited: {proc.stdout.read().decode()[-3000:]}")
            try:
                data = _graphql(port, QUERY)["data"]
                if data["assetNodes"]:
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(1.0)
        assert data and data["assetNodes"], "webserver did not serve the asset graph within 120 s"
        repo = data["repositoriesOrError"]["nodes"][0]
        assert {s["name"] for s in repo["sensors"]} >= {"new_product_sensor", "bucket_miss_sensor"}
        assert {s["name"] for s in repo["schedules"]} >= {"daily_catalog_refresh"}
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
        for asset in ("catalog", "product_masks", "bucket_plans", "generated_backgrounds", "serving_index"):
            dims = {d["name"]: sorted(d["partitionKeys"]) for d in nodes[asset]["partitionKeysByDimension"]}
            assert dims == {"merchant": merchants, "category": categories}, asset
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
