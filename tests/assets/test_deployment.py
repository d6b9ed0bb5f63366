"""The resources each deployment gets from the environment (bggen_assets/deployment.py): every
variable the README documents has its effect; URLs and secrets reach Dagster as EnvVars (read at
run time, never shown in the UI); with no variable set, the embedded defaults initialise."""
import re
from pathlib import Path

import dagster as dg
import pytest

from bggen_assets import deployment
from bggen_assets.deployment import build_executor, build_resources

README = Path(__file__).resolve().parents[2] / "README.md"
DB_URL = "mysql+mysqlconnector://bggen:db-password-1@db.internal:3306/bggen"
REDIS_URL = "redis://:redis-password-2@cache.internal:6379/3"
S3 = {"BGGEN_STORE": "s3", "BGGEN_S3_BUCKET": "creatives", "BGGEN_S3_ENDPOINT_URL": "http://s3.internal:8333",
      "AWS_ACCESS_KEY_ID": "key-id-3", "AWS_SECRET_ACCESS_KEY": "secret-key-4"}
BROKER = "amqp://bggen:broker-password-5@mq.internal:5672//"
SECRETS = {"BGGEN_DB_URL": DB_URL, "BGGEN_MISS_QUEUE": "redis", "BGGEN_REDIS_URL": REDIS_URL, **S3}


def built(env: dict) -> dict:
    """The resources by key, plus the executor's resolved config under "executor" (None: Dagster's default)."""
    executor = build_executor(env)
    resolved = executor and executor.apply_config_mapping({}).value["config"]
    return {**build_resources(env, read_secrets_now=True), "executor": resolved}


# variable -> (environment that uses it, what it changes in `built`)
EFFECTS = {
    "BGGEN_DATA_DIR": ({}, lambda b, d: (b["store"].root, b["metadata_db"].url)
                       == (str(d / "objects"), f"sqlite:///{d / 'bggen.db'}")),
    "BGGEN_DB_URL": ({"BGGEN_DB_URL": DB_URL}, lambda b, d: b["metadata_db"].url == DB_URL),
    "BGGEN_STORE": (S3, lambda b, d: type(b["store"]).__name__ == "S3ObjectStore"),
    "BGGEN_S3_BUCKET": (S3, lambda b, d: b["store"].bucket == "creatives"),
    "BGGEN_S3_ENDPOINT_URL": (S3, lambda b, d: b["store"].s3.endpoint_url == "http://s3.internal:8333"),
    "BGGEN_S3_PREFIX": ({**S3, "BGGEN_S3_PREFIX": "shop-a"}, lambda b, d: b["store"].prefix == "shop-a"),
    "BGGEN_S3_CREATE_BUCKET": ({**S3, "BGGEN_S3_CREATE_BUCKET": "1"}, lambda b, d: b["store"].create_bucket),
    "AWS_ACCESS_KEY_ID": (S3, lambda b, d: b["store"].s3.aws_access_key_id == "key-id-3"),
    "AWS_SECRET_ACCESS_KEY": (S3, lambda b, d: b["store"].s3.aws_secret_access_key == "secret-key-4"),
    "AWS_REGION": ({**S3, "AWS_REGION": "eu-west-3"}, lambda b, d: b["store"].s3.region_name == "eu-west-3"),
    "BGGEN_STORE_ROOT": ({"BGGEN_STORE_ROOT": "/objects"}, lambda b, d: b["store"].root == "/objects"),
    "BGGEN_MISS_QUEUE": ({"BGGEN_MISS_QUEUE": "redis"}, lambda b, d: type(b["miss_queue"]).__name__ == "RedisMissQueue"),
    "BGGEN_REDIS_URL": ({"BGGEN_MISS_QUEUE": "redis", "BGGEN_REDIS_URL": REDIS_URL},
                        lambda b, d: b["miss_queue"].redis_url == REDIS_URL),
    "BGGEN_REDIS_NAMESPACE": ({"BGGEN_MISS_QUEUE": "redis", "BGGEN_REDIS_NAMESPACE": "{shop}:m"},
                              lambda b, d: b["miss_queue"].namespace == "{shop}:m"),
    "BGGEN_FEEDS_DIR": ({"BGGEN_FEEDS_DIR": "/feeds"}, lambda b, d: b["creative_config"].feeds_dir == "/feeds"),
    "BGGEN_PLACEMENTS": ({"BGGEN_PLACEMENTS": "/p.yaml"}, lambda b, d: b["creative_config"].placements_path == "/p.yaml"),
    "BGGEN_PROMPTS": ({"BGGEN_PROMPTS": "/q.yaml"}, lambda b, d: b["creative_config"].prompts_path == "/q.yaml"),
    "BGGEN_BUCKET_RATIO": ({"BGGEN_BUCKET_RATIO": "1.5"}, lambda b, d: b["creative_config"].bucket_ratio == 1.5),
    "BGGEN_BUCKETING": ({"BGGEN_BUCKETING": "cover"}, lambda b, d: b["creative_config"].bucketing_mode() == "cover"),
    "BGGEN_CANVAS_PIXELS": ({"BGGEN_CANVAS_PIXELS": "120000"}, lambda b, d: b["creative_config"].canvas_pixels == 120_000),
    "BGGEN_SKIP_OUT_OF_STOCK": ({"BGGEN_SKIP_OUT_OF_STOCK": "0"}, lambda b, d: b["creative_config"].skip_out_of_stock is False),
    "BGGEN_MAX_REJECTED_FRACTION": ({"BGGEN_MAX_REJECTED_FRACTION": "0.2"},
                                    lambda b, d: b["creative_config"].max_rejected_fraction == 0.2),
    "BGGEN_FEED_SPLITS": ({"BGGEN_FEED_SPLITS": "/srv/splits"}, lambda b, d: b["creative_config"].split_cache_dir == "/srv/splits"),
    "BGGEN_FETCH_ALLOW_NETWORKS": ({"BGGEN_FETCH_ALLOW_NETWORKS": "127.0.0.0/8"},
                                   lambda b, d: b["creative_config"].fetch.allow_networks == "127.0.0.0/8"),
    "BGGEN_FETCH_CONCURRENCY": ({"BGGEN_FETCH_CONCURRENCY": "3"}, lambda b, d: b["creative_config"].fetch.concurrency == 3),
    "BGGEN_FETCH_CONNECT_TIMEOUT_S": ({"BGGEN_FETCH_CONNECT_TIMEOUT_S": "2.5"},
                                      lambda b, d: b["creative_config"].fetch.connect_timeout_s == 2.5),
    "BGGEN_FETCH_READ_TIMEOUT_S": ({"BGGEN_FETCH_READ_TIMEOUT_S": "7"}, lambda b, d: b["creative_config"].fetch.read_timeout_s == 7.0),
    "BGGEN_FETCH_TOTAL_TIMEOUT_S": ({"BGGEN_FETCH_TOTAL_TIMEOUT_S": "30"},
                                    lambda b, d: b["creative_config"].fetch.total_timeout_s == 30.0),
    "BGGEN_FETCH_MAX_BYTES": ({"BGGEN_FETCH_MAX_BYTES": "1000"}, lambda b, d: b["creative_config"].fetch.max_bytes == 1000),
    "BGGEN_FETCH_MAX_PIXELS": ({"BGGEN_FETCH_MAX_PIXELS": "5000"}, lambda b, d: b["creative_config"].fetch.max_pixels == 5000),
    "BGGEN_FETCH_RETRIES": ({"BGGEN_FETCH_RETRIES": "0"}, lambda b, d: b["creative_config"].fetch.retries == 0),
    "BGGEN_MASKER": ({"BGGEN_MASKER": "yolo"}, lambda b, d: b["masker"].method == "yolo"),
    "BGGEN_YOLO_WEIGHTS": ({"BGGEN_YOLO_WEIGHTS": "/w.pt"}, lambda b, d: b["masker"].yolo_weights == "/w.pt"),
    "BGGEN_ONNX_MODEL": ({"BGGEN_ONNX_MODEL": "/m.onnx"}, lambda b, d: b["masker"].onnx_model == "/m.onnx"),
    "BGGEN_ONNX_INPUT_SIZE": ({"BGGEN_ONNX_INPUT_SIZE": "320"}, lambda b, d: b["masker"].onnx_input_size == 320),
    "BGGEN_ONNX_MEAN": ({"BGGEN_ONNX_MEAN": "0.5,0.5,0.5"}, lambda b, d: b["masker"].onnx_mean == [0.5, 0.5, 0.5]),
    "BGGEN_ONNX_STD": ({"BGGEN_ONNX_STD": "1,1,1"}, lambda b, d: b["masker"].onnx_std == [1.0, 1.0, 1.0]),
    "BGGEN_ONNX_OUTPUT_INDEX": ({"BGGEN_ONNX_OUTPUT_INDEX": "2"}, lambda b, d: b["masker"].onnx_output_index == 2),
    "BGGEN_ONNX_ACTIVATION": ({"BGGEN_ONNX_ACTIVATION": "sigmoid"},
                              lambda b, d: b["masker"].onnx_activation == "sigmoid"),
    "BGGEN_ONNX_THRESHOLD": ({"BGGEN_ONNX_THRESHOLD": "0.4"}, lambda b, d: b["masker"].onnx_threshold == 0.4),
    "BGGEN_ONNX_BATCH_SIZE": ({"BGGEN_ONNX_BATCH_SIZE": "8"}, lambda b, d: b["masker"].onnx_batch_size == 8),
    "BGGEN_AUTO_MIN_SCORE": ({"BGGEN_AUTO_MIN_SCORE": "0.7"}, lambda b, d: b["masker"].auto_min_score == 0.7),
    "BGGEN_MIN_MASK_CONFIDENCE": ({"BGGEN_MIN_MASK_CONFIDENCE": "0.35"},
                                  lambda b, d: b["masker"].min_confidence == 0.35),
    "BGGEN_GENERATOR": ({"BGGEN_GENERATOR": "diffusion"}, lambda b, d: b["generator"].kind == "diffusion"),
    "BGGEN_BASE_MODEL": ({"BGGEN_BASE_MODEL": "/sd"}, lambda b, d: b["generator"].diffusion.base_model == "/sd"),
    "BGGEN_CONTROLNET_MODEL": ({"BGGEN_CONTROLNET_MODEL": "/cn"},
                               lambda b, d: b["generator"].diffusion.controlnet_model == "/cn"),
    "BGGEN_LOCAL_FILES_ONLY": ({"BGGEN_LOCAL_FILES_ONLY": "1"}, lambda b, d: b["generator"].diffusion.local_files_only),
    "BGGEN_PIXEL_BUDGET": ({"BGGEN_PIXEL_BUDGET": "65536"}, lambda b, d: b["generator"].diffusion.pixel_budget == 65536),
    "BGGEN_LORA": ({"BGGEN_LORA": "/loras/lcm.safetensors"},
                   lambda b, d: b["generator"].diffusion_config().lora == "/loras/lcm.safetensors"),
    "BGGEN_LORA_WEIGHT_NAME": ({"BGGEN_LORA_WEIGHT_NAME": "Hyper-SD15-8steps-lora.safetensors"},
                               lambda b, d: b["generator"].diffusion.lora_weight_name == "Hyper-SD15-8steps-lora.safetensors"),
    "BGGEN_LORA_SCALE": ({"BGGEN_LORA_SCALE": "0.125"}, lambda b, d: b["generator"].diffusion.lora_scale == 0.125),
    "BGGEN_SCHEDULER": ({"BGGEN_SCHEDULER": "lcm"}, lambda b, d: b["generator"].diffusion_config().scheduler == "lcm"),
    "BGGEN_STEPS": ({"BGGEN_STEPS": "4"}, lambda b, d: b["generator"].diffusion.steps == 4),
    "BGGEN_GUIDANCE_SCALE": ({"BGGEN_GUIDANCE_SCALE": "1.5"}, lambda b, d: b["generator"].diffusion.guidance_scale == 1.5),
    "BGGEN_USE_INPAINT": ({"BGGEN_USE_INPAINT": "1"}, lambda b, d: b["generator"].diffusion_config().use_inpaint),
    "BGGEN_INPAINT_CONTROLNET_MODEL": ({"BGGEN_INPAINT_CONTROLNET_MODEL": "/cn-inpaint"},
                                       lambda b, d: b["generator"].diffusion.inpaint_controlnet_model == "/cn-inpaint"),
    "BGGEN_DEVICE": ({"BGGEN_DEVICE": "cuda:1"}, lambda b, d: b["generator"].diffusion_config().device == "cuda:1"),
    "BGGEN_EXECUTOR": ({"BGGEN_EXECUTOR": "celery"}, lambda b, d: b["executor"] is not None
                       and b["executor"]["broker"] == "amqp://guest:guest@127.0.0.1:5672//"),
    "BGGEN_CELERY_BROKER": ({"BGGEN_EXECUTOR": "celery", "BGGEN_CELERY_BROKER": BROKER},
                            lambda b, d: b["executor"]["broker"] == BROKER),
    "BGGEN_CELERY_BACKEND": ({"BGGEN_EXECUTOR": "celery", "BGGEN_CELERY_BACKEND": "redis://127.0.0.1:6379/2"},
                             lambda b, d: b["executor"]["backend"] == "redis://127.0.0.1:6379/2"),
}


def test_every_documented_variable_is_checked_here():
    readme = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    variables = re.compile(r"(?:BGGEN|AWS)_[A-Z0-9_]+")
    assert set(variables.findall(readme)) <= set(variables.findall(deployment.__doc__)) == set(EFFECTS)


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_each_documented_variable_has_its_effect(name, tmp_path, monkeypatch):
    env, effect = EFFECTS[name]
    data_dir = tmp_path / "data"
    for var, value in env.items():  # the executor's URLs are EnvVars, resolved from the process environment
        monkeypatch.setenv(var, value)
    assert effect(built({"BGGEN_DATA_DIR": str(data_dir), **env}), data_dir)
    for var in env:
        monkeypatch.delenv(var)
    embedded = built({"BGGEN_DATA_DIR": str(tmp_path / "elsewhere")})
    try:
        assert not effect(embedded, data_dir)  # the embedded defaults: not
    except (AttributeError, TypeError):
        pass  # nor a field the embedded backend does not have (no executor config: None)


def test_urls_and_secrets_are_env_vars_the_ui_shows_by_name_only(tmp_path, monkeypatch):
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster._serdes import serialize_value

    from bggen_assets.definitions import build_definitions

    env = {"BGGEN_DATA_DIR": str(tmp_path), **SECRETS, "BGGEN_EXECUTOR": "celery", "BGGEN_CELERY_BROKER": BROKER}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    resources = build_resources()
    assert resources["metadata_db"].url.env_var_name == "BGGEN_DB_URL"
    assert resources["miss_queue"].redis_url.env_var_name == "BGGEN_REDIS_URL"
    s3 = resources["store"].s3
    assert (resources["store"].bucket.env_var_name, s3.endpoint_url.env_var_name, s3.aws_access_key_id.env_var_name,
            s3.aws_secret_access_key.env_var_name) == (
        "BGGEN_S3_BUCKET", "BGGEN_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    # what the webserver gets from the code location (resource config shown in the UI)
    snapshot = serialize_value(RepositorySnap.from_def(build_definitions().get_repository_def()))
    for secret in ("db-password-1", "redis-password-2", "key-id-3", "secret-key-4", "broker-password-5"):
        assert secret not in snapshot
    assert '"name": "BGGEN_DB_URL"' in snapshot


def test_env_vars_are_read_when_dagster_initialises_the_resource(tmp_path, monkeypatch):
    monkeypatch.setenv("BGGEN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BGGEN_DB_URL", f"sqlite:///{tmp_path / 'when-the-code-loaded.db'}")
    resources = build_resources()
    monkeypatch.setenv("BGGEN_DB_URL", f"sqlite:///{tmp_path / 'at-run-time.db'}")
    with dg.build_resources({"metadata_db": resources["metadata_db"]}) as ready:
        assert ready.metadata_db.url == f"sqlite:///{tmp_path / 'at-run-time.db'}"


def test_the_embedded_deployment_initialises_with_no_variable_set(tmp_path):
    resources = build_resources({"BGGEN_DATA_DIR": str(tmp_path)})
    with dg.build_resources(resources) as ready:  # no EnvVar to resolve: nothing is missing
        assert ready.metadata_db.url == f"sqlite:///{tmp_path / 'bggen.db'}"
        assert ready.store.root == str(tmp_path / "objects")
        assert type(ready.miss_queue).__name__ == "DbMissQueue"
        assert ready.generator.kind == "template" and ready.masker.method == "classical"
    assert build_executor({}) is None


@pytest.mark.parametrize("name, value", [("BGGEN_STORE", "gcs"), ("BGGEN_MISS_QUEUE", "kafka"), ("BGGEN_EXECUTOR", "dask"),
                                         ("BGGEN_BUCKETING", "hexagons")])
def test_an_unknown_backend_is_refused_by_name(name, value, tmp_path):
    build = build_executor if name == "BGGEN_EXECUTOR" else build_resources
    with pytest.raises(ValueError, match=f"{name} must be .*, got '{value}'"):
        build({"BGGEN_DATA_DIR": str(tmp_path), name: value})


def test_s3_without_a_bucket_is_refused(tmp_path):
    with pytest.raises(ValueError, match="BGGEN_STORE=s3 needs BGGEN_S3_BUCKET"):
        build_resources({"BGGEN_DATA_DIR": str(tmp_path), "BGGEN_STORE": "s3"})
