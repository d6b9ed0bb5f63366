"""The `diffusion` generator through the real config path, end to end in the asset graph, with a
tiny Stable Diffusion + ControlNet pipeline built offline (random weights; no mock of diffusers)."""
import io
import re

import numpy as np
import pytest
import yaml
from dagster import DagsterInstance, materialize
from PIL import Image

from bggen_assets.assets.pipeline import pipeline_assets
from bggen_assets.core import serving_index
from bggen_assets.partitions import partition_key
from bggen_assets.tiny_pipeline import build_tiny_pipeline
from pipeline_helpers import checks_of, metadata_of, run_partition
from resources.creative_config import CreativeConfig
from resources.generator import DiffusionSettings, GeneratorResource


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def small_plan_config(tmp_path, sample_dir):
    """Two placements, one theme: few canvases, so CPU diffusion stays quick."""
    (tmp_path / "placements.yaml").write_text(yaml.safe_dump(
        {"default": [{"size": "300x250", "fill": 0.8, "anchor": [0.5, 0.5]}, {"size": "728x90", "fill": 0.8, "anchor": [0.5, 0.5]}]}))
    prompts = yaml.safe_load((sample_dir / "prompts.yaml").read_text())
    prompts["categories"] = {"bags": prompts["categories"]["bags"][:1]}
    (tmp_path / "prompts.yaml").write_text(yaml.safe_dump(prompts))
    return CreativeConfig(feeds_dir=str(sample_dir / "feeds"), placements_path=str(tmp_path / "placements.yaml"),
                          prompts_path=str(tmp_path / "prompts.yaml"), canvas_pixels=40_000)


def _diffusion(tiny_models, **settings):
    return GeneratorResource(kind="diffusion", diffusion=DiffusionSettings(**{
        "base_model": str(tiny_models["base_model"]), "controlnet_model": str(tiny_models["controlnet_model"]),
        "local_files_only": True, "pixel_budget": 64 * 64, "steps": 4, "device": "cpu", **settings}))


def test_diffusion_generates_the_partition_end_to_end(pipeline_resources, small_plan_config, tiny_models):
    res = {**pipeline_resources, "creative_config": small_plan_config, "generator": _diffusion(tiny_models)}
    result, instance = run_partition(res, "acme-outfitters", "bags")
    assert result.success
    gen = metadata_of(result, "generated_backgrounds")
    assert gen["generated"] > 0 and gen["generator"].startswith("diffusion-")
    checks = checks_of(result)
    assert checks["product_fidelity"].passed  # the product's own pixels, after diffusion
    assert checks["index_complete"].passed
    assert checks["generation_quality_gates"].metadata["gated"].value == gen["generated"]
    store = res["store"]
    doc = serving_index.read_current(store, "acme-outfitters", "bags")
    entry = next(iter(doc.entries.values()))
    assert Image.open(io.BytesIO(store.get_bytes(entry.image_key))).size == entry.canvas
    # same model, same settings: nothing regenerates
    again, _ = run_partition(res, "acme-outfitters", "bags", instance=instance)
    assert metadata_of(again, "generated_backgrounds")["generated"] == 0
    # a setting that changes pixels is part of the identity: everything regenerates
    res2 = {**res, "generator": _diffusion(tiny_models, guidance_scale=3.0)}
    third, _ = run_partition(res2, "acme-outfitters", "bags", instance=instance)
    assert metadata_of(third, "generated_backgrounds")["generated"] == gen["generated"]


@pytest.mark.parametrize("override, message", [
    ({"base_model": "/nonexistent/sd"}, "not found|does not exist|no such"),
    ({"controlnet_model": "BASE"}, "ControlNet|controlnet"),
    ({"device": "cuda"}, "CUDA|cuda"),
])
def test_bad_diffusion_config_fails_at_resource_setup(pipeline_resources, small_plan_config, tiny_models, override, message):
    import torch

    if override.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if override.get("controlnet_model") == "BASE":
        override = {"controlnet_model": str(tiny_models["base_model"])}  # a pipeline dir is not a ControlNet
    gen = _diffusion(tiny_models, **override)
    res = {**pipeline_resources, "creative_config": small_plan_config, "generator": gen}
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("merchant", ["acme-outfitters"])
    instance.add_dynamic_partitions("category", ["bags"])
    with pytest.raises(Exception) as info:
        materialize(pipeline_assets, partition_key=partition_key("acme-outfitters", "bags"), resources=res, instance=instance)
    assert "resource_fn on ResourceDefinition generator" in str(info.value)  # Dagster names the resource...
    assert re.search(message, str(info.value.__cause__))  # ...and the cause says what is wrong
    # before any partition work: nothing was written
    assert not list(pipeline_resources["store"].list_keys("manifests"))
