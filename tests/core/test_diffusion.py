"""Diffusion generator on the tiny offline SD + ControlNet pipeline (random weights, real code path)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bggen_assets.core.diffusion import (
    DeviceUnavailableError,
    DiffusionConfig,
    DiffusionConfigError,
    DiffusionGenerator,
    ModelNotFoundError,
    WrongModelTypeError,
    generation_shape,
    generation_shapes,
    generation_size,
    shape_aspect_tolerance,
)
from bggen_assets.core.diffusion_models import load_pipeline
from bggen_assets.core.generation import GenerationJob
from bggen_assets.tiny_pipeline import build_tiny_pipeline

BUDGET = 64 * 64


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model is overhead-bound: one intra-op thread is as fast on a quiet machine and
    far steadier on a busy one (OpenMP threads spin against other processes)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"), seed=0)


def _cfg(tiny, **kw):
    base = dict(base_model=str(tiny["base_model"]), controlnet_model=str(tiny["controlnet_model"]),
                pixel_budget=BUDGET, steps=10)
    base.update(kw)
    return DiffusionConfig(**base)


@pytest.fixture(scope="module")
def gen(tiny):
    return DiffusionGenerator(_cfg(tiny, batch_size=3))


def job(w=80, h=80, seed=1, prompt="a sunny beach", shape="box"):
    canvas = np.full((h, w, 3), 127, np.uint8)
    mask = np.zeros((h, w), bool)
    if shape == "box":
        mask[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = True
    else:
        yy, xx = np.mgrid[:h, :w]
        mask[((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 <= 1] = True
    canvas[mask] = (210, 40, 30)
    canvas[h // 2 - 2: h // 2 + 2][mask[h // 2 - 2: h // 2 + 2]] = (250, 250, 250)
    return GenerationJob(canvas_rgb=canvas, product_mask=mask, prompt=prompt, negative_prompt="",
                         seed=seed, theme_id="t")


def maxdiff(a, b):
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def meandiff(a, b):
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_tiny_pipeline_loads_back_and_runs_64px(tiny):
    """The offline recipe loads back through diffusers' own from_pretrained and runs. (Its speed,
    under a second for 64x64 in 20 steps on CPU, is measured by benchmarks/diffusion.py.)"""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from PIL import Image

    cn = ControlNetModel.from_pretrained(tiny["controlnet_model"], local_files_only=True)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny["base_model"], controlnet=cn, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    edges = Image.fromarray(np.zeros((64, 64, 3), np.uint8))
    out = pipe("a beach", image=edges, num_inference_steps=20, height=64, width=64,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_outputs_have_each_canvas_size(gen):
    jobs = [job(80, 80), job(160, 60, seed=2), job(37, 91, seed=3)]
    outs = gen.generate(jobs)
    assert [o.shape for o in outs] == [(80, 80, 3), (60, 160, 3), (91, 37, 3)]
    assert all(o.dtype == np.uint8 for o in outs)
    assert gen.generate([]) == []


def test_same_seed_same_image_other_seed_or_prompt_differs(gen):
    a = gen.generate([job(seed=5)])[0]
    b = gen.generate([job(seed=5)])[0]
    c = gen.generate([job(seed=6)])[0]
    d = gen.generate([job(seed=5, prompt="a snowy forest")])[0]
    assert maxdiff(a, b) == 0
    assert meandiff(a, c) > 10
    assert meandiff(a, d) > 2


def test_control_edges_steer_the_image(gen):
    a = gen.generate([job(seed=5)])[0]
    b = gen.generate([job(seed=5, shape="ellipse")])[0]
    assert meandiff(a, b) > 2


def test_a_job_does_not_depend_on_its_batch(gen):
    # two generation sizes, three prompts, repeated seeds: batched 3 at a time vs one by one
    jobs = [job(80, 80, 11, "beach"), job(160, 80, 12, "forest"), job(80, 80, 13, "kitchen"),
            job(80, 80, 14, "beach"), job(160, 80, 15, "beach"), job(80, 80, 11, "marble")]
    logs = []
    batched = DiffusionGenerator(gen.config, log=logs.append, loaded=gen.load()).generate(jobs)
    assert any("3 image(s) at 64x64" in m for m in logs), logs  # really batched
    alone = [gen.generate([j])[0] for j in jobs]
    for i, (x, y) in enumerate(zip(batched, alone)):
        assert maxdiff(x, y) <= 1, f"job {i} differs by {maxdiff(x, y)} when batched"


def test_inpaint_mode_runs_and_is_deterministic(tiny):
    g = DiffusionGenerator(_cfg(tiny, use_inpaint=True, batch_size=2))
    jobs = [job(seed=3), job(96, 64, seed=4, prompt="forest")]
    a = g.generate(jobs)
    b = [g.generate([j])[0] for j in jobs]
    assert [x.shape for x in a] == [(80, 80, 3), (64, 96, 3)]
    assert all(maxdiff(x, y) <= 1 for x, y in zip(a, b))
    assert g.identity() != DiffusionGenerator(_cfg(tiny)).identity()


def build_tiny_lora(tiny, out_dir, seed=0):
    """A LoRA for the tiny pipeline's UNet, made here with peft and saved the way diffusers saves
    LoRAs (pytorch_lora_weights.safetensors): random, non-zero up-projections, so it changes images."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(tiny["base_model"] / "unet", local_files_only=True)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=state, safe_serialization=True)
    return out_dir / "pytorch_lora_weights.safetensors"


def test_a_few_step_lora_is_loaded_fused_and_named(tiny, tmp_path):
    lora = build_tiny_lora(tiny, tmp_path / "lora")
    plain_cfg = _cfg(tiny, scheduler="lcm", steps=4, guidance_scale=1.0)
    fewstep = DiffusionGenerator(_cfg(tiny, scheduler="lcm", steps=4, guidance_scale=1.0, lora=str(lora)))
    plain = DiffusionGenerator(plain_cfg)
    jobs = [job(seed=5), job(96, 64, seed=6, prompt="forest")]
    a, again = fewstep.generate(jobs), [fewstep.generate([j])[0] for j in jobs]
    assert all(maxdiff(x, y) <= 1 for x, y in zip(a, again))  # deterministic, batch-independent
    assert all(maxdiff(x, y) > 10 for x, y in zip(a, plain.generate(jobs)))  # the LoRA changes images
    loaded = fewstep.load()
    assert type(loaded.pipeline.scheduler).__name__ == "LCMScheduler"
    assert loaded.lora and any(s.startswith("lora-fused") for s in loaded.speedups)
    assert not getattr(loaded.pipeline.unet, "peft_config", None)  # fused, no adapter layers left
    assert not any("lora" in n for n, _ in loaded.pipeline.unet.named_parameters())
    # the LoRA (its content), its scale and the directory form are all the generator's identity
    assert fewstep.identity() != plain.identity()
    assert fewstep.identity() != DiffusionGenerator(_cfg(tiny, scheduler="lcm", steps=4, guidance_scale=1.0,
                                                         lora=str(lora), lora_scale=0.5)).identity()
    by_dir = DiffusionGenerator(_cfg(tiny, scheduler="lcm", steps=4, guidance_scale=1.0, lora=str(lora.parent)))
    assert maxdiff(by_dir.generate(jobs[:1])[0], a[0]) <= 1
    other = build_tiny_lora(tiny, tmp_path / "other", seed=1)
    assert DiffusionGenerator(_cfg(tiny, scheduler="lcm", steps=4, guidance_scale=1.0,
                                   lora=str(other))).identity() != fewstep.identity()
    with pytest.raises(ModelNotFoundError, match="lora='/no/such/lora.safetensors'"):
        DiffusionGenerator(_cfg(tiny, lora="/no/such/lora.safetensors")).load()


def test_inpaint_mode_runs_with_an_inpainting_controlnet(tiny):
    # the tiny ControlNet stands in for control_v11p_sd15_inpaint: same architecture, other input
    cfg = _cfg(tiny, use_inpaint=True, inpaint_controlnet_model=str(tiny["controlnet_model"]), batch_size=2)
    g = DiffusionGenerator(cfg)
    jobs = [job(seed=3), job(96, 64, seed=4, prompt="forest")]
    a = g.generate(jobs)
    assert all(maxdiff(x, y) <= 1 for x, y in zip(a, [g.generate([j])[0] for j in jobs]))
    assert g.load().controlnet.field == "inpaint_controlnet_model"
    canny_inpaint = DiffusionGenerator(_cfg(tiny, use_inpaint=True, batch_size=2))
    assert g.identity() != canny_inpaint.identity()
    assert max(maxdiff(x, y) for x, y in zip(a, canny_inpaint.generate(jobs))) > 0  # another control image
    with pytest.raises(ModelNotFoundError, match="inpaint_controlnet_model='/no/such/cn'"):
        DiffusionGenerator(_cfg(tiny, use_inpaint=True, inpaint_controlnet_model="/no/such/cn")).load()


def test_identity_names_models_and_output_settings(tiny, tmp_path):
    ident = DiffusionGenerator(_cfg(tiny)).identity()
    assert ident.startswith("diffusion-v1-")
    assert ident == DiffusionGenerator(_cfg(tiny)).identity()
    # speed-only settings do not change it
    assert ident == DiffusionGenerator(_cfg(tiny, batch_size=7, channels_last=True)).identity()
    for kw in ({"steps": 11}, {"guidance_scale": 5.0}, {"scheduler": "unipc"},
               {"pixel_budget": 2 * BUDGET}, {"controlnet_conditioning_scale": 0.5}):
        assert DiffusionGenerator(_cfg(tiny, **kw)).identity() != ident, kw
    # other weights (a copy of the tiny model with one changed file) -> other identity
    other = tmp_path / "sd"
    shutil.copytree(tiny["base_model"], other)
    sched = other / "scheduler" / "scheduler_config.json"
    cfg = json.loads(sched.read_text())
    cfg["beta_end"] = 0.02
    sched.write_text(json.dumps(cfg))
    changed = DiffusionGenerator(_cfg(tiny, base_model=str(other))).identity()
    assert changed != ident
    # files a load does not read (a single-file checkpoint, an fp16 variant) do not count
    (other / "v1-5-pruned.ckpt").write_bytes(b"x" * 100)
    (other / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"y" * 100)
    assert DiffusionGenerator(_cfg(tiny, base_model=str(other))).identity() == changed


def test_generation_size_rule():
    within_cap = [(512, 512), (1200, 628), (300, 250), (3000, 2000), (1, 1)]
    beyond_cap = [(728, 90), (90, 728), (970, 250)]
    for w, h in within_cap + beyond_cap:
        gw, gh = generation_size(w, h, 512 * 512, 2.0)
        assert gw % 8 == 0 and gh % 8 == 0
        assert 0.85 * 512 * 512 <= gw * gh <= 1.1 * 512 * 512
        assert max(gw / gh, gh / gw) <= 2.0
    for w, h in within_cap:  # the canvas's aspect ratio, to rounding
        gw, gh = generation_size(w, h, 512 * 512, 2.0)
        assert abs(gw / gh - w / h) / (w / h) < 0.05, (w, h, gw, gh)
    for w, h in beyond_cap:  # generated at the cap, in the canvas's orientation
        assert generation_size(w, h, 512 * 512, 2.0) == ((720, 360) if w > h else (360, 720))
    assert generation_size(512, 512) == (512, 512)
    assert generation_size(728, 90, max_aspect=3.0)[0] / generation_size(728, 90, max_aspect=3.0)[1] > 2.5


def test_generation_shapes_are_few_multiples_of_64_within_the_budget():
    for budget, cap in ((512 * 512, 2.0), (786_432, 2.0), (1024 * 1024, 3.0)):
        shapes = generation_shapes(budget, cap, 64)
        assert 3 <= len(shapes) <= 16, shapes
        assert len(set(shapes)) == len(shapes) and {(h, w) for w, h in shapes} == set(shapes)  # tall = wide
        for w, h in shapes:
            assert w % 64 == 0 and h % 64 == 0
            assert 0.75 * budget <= w * h <= budget and max(w / h, h / w) <= cap + 1e-9
        tolerance = shape_aspect_tolerance(budget, cap, 64)
        assert 1.0 < tolerance <= 1.15
        for w, h in [(512, 512), (1200, 628), (300, 250), (728, 90), (90, 728), (970, 250), (160, 600), (1, 1)]:
            gw, gh = generation_shape(w, h, budget, cap, 64)
            assert (gw, gh) in shapes
            a = min(max(w / h, 1 / cap), cap)  # the capped aspect, stretched by at most the tolerance
            assert max(gw / gh / a, a / (gw / gh)) <= tolerance + 1e-9, (w, h, gw, gh)
    assert generation_shapes(512 * 512, 2.0, 64) == ((320, 640), (384, 640), (448, 576), (512, 512), (576, 448),
                                                      (640, 384), (640, 320))


def test_the_generator_groups_by_shape_and_names_its_shape_rule(tiny):
    snapped, free = _cfg(tiny, pixel_budget=128 * 128), _cfg(tiny, pixel_budget=128 * 128, shape_multiple=8)
    assert DiffusionGenerator(snapped).generation_shape(300, 250) == generation_shape(300, 250, 128 * 128, 2.0, 64)
    assert DiffusionGenerator(free).generation_shape(300, 250) == generation_size(300, 250, 128 * 128, 2.0)
    assert DiffusionGenerator(snapped).identity() != DiffusionGenerator(free).identity()
    with pytest.raises(DiffusionConfigError, match="shape_multiple"):
        DiffusionConfig(shape_multiple=60)


def test_missing_model_dir_is_named(tiny, tmp_path):
    with pytest.raises(ModelNotFoundError, match="base_model.*does not exist"):
        load_pipeline(_cfg(tiny, base_model=str(tmp_path / "nope")))
    with pytest.raises(ModelNotFoundError, match="controlnet_model"):
        DiffusionGenerator(_cfg(tiny, controlnet_model=str(tmp_path / "nope"))).load()


def test_uncached_hub_id_fails_offline(tiny):
    with pytest.raises(ModelNotFoundError, match="bggen-test/not-a-model.*local cache"):
        load_pipeline(_cfg(tiny, base_model="bggen-test/not-a-model"))


def test_wrong_model_type_is_named(tiny, tmp_path):
    with pytest.raises(WrongModelTypeError, match="base_model.*not a diffusers pipeline.*ControlNetModel"):
        load_pipeline(_cfg(tiny, base_model=str(tiny["controlnet_model"])))
    with pytest.raises(WrongModelTypeError, match="controlnet_model.*not a ControlNetModel.*StableDiffusionPipeline"):
        load_pipeline(_cfg(tiny, controlnet_model=str(tiny["base_model"])))
    # a controlnet config whose class is something else (e.g. a UNet directory)
    with pytest.raises(WrongModelTypeError, match="UNet2DConditionModel"):
        load_pipeline(_cfg(tiny, controlnet_model=str(tiny["base_model"] / "unet")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WrongModelTypeError, match="not a diffusers pipeline"):
        load_pipeline(_cfg(tiny, base_model=str(empty)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_fails_at_load(tiny):
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        load_pipeline(_cfg(tiny, device="cuda"))


def test_bad_fields_are_named():
    with pytest.raises(DiffusionConfigError, match="scheduler"):
        DiffusionConfig(scheduler="pndm-ish")
    with pytest.raises(DiffusionConfigError, match="device"):
        DiffusionConfig(device="tpu")
    with pytest.raises(DiffusionConfigError, match="unknown DiffusionConfig field"):
        DiffusionConfig.from_mapping({"stepz": 3})


def test_quality_gates_on_the_tiny_pipeline(gen):
    from bggen_assets.core.quality_gates import generate_many_with_gates

    jobs = [job(seed=21), job(96, 64, seed=22, prompt="forest")]
    firsts = [gen.generate([j])[0] for j in jobs]
    logs = []
    logged = DiffusionGenerator(gen.config, log=logs.append, loaded=gen.load())

    def calls():  # one "N image(s) in M batch(es)" line per generate() call
        return [m.split(": ")[1].split(" image(s)")[0] for m in logs if " batch(es), " in m]

    # a segmenter that sees the product fill the frame: it "grew" on every seed, so both jobs are
    # regenerated once with seed + 1, in one call, and the kept image is the first attempt's
    # (all attempts score the same expansion; the first of equals is kept)
    rs = generate_many_with_gates(logged, jobs, max_expansion=0.1, max_leakage=1.0, max_attempts=2,
                                  segment=lambda img: np.ones(img.shape[:2], bool))
    assert calls() == ["2", "2"]
    for r, j, first in zip(rs, jobs, firsts):
        assert not r.passed and r.attempts == 2 and r.seeds_tried == (j.seed, j.seed + 1)
        assert [m["seed"] for m in r.metrics] == [j.seed, j.seed + 1]
        assert all(m["object_expansion"] > 0.1 and not m["passed"] for m in r.metrics)
        assert r.chosen_seed == j.seed and maxdiff(r.image, first) == 0
    # a segmenter that finds nothing grown and a leakage limit no image exceeds: one attempt each
    logs.clear()
    rs = generate_many_with_gates(logged, jobs, max_expansion=0.1, max_leakage=1.0, max_attempts=2,
                                  segment=lambda img: np.zeros(img.shape[:2], bool))
    assert calls() == ["2"]
    for r, j, first in zip(rs, jobs, firsts):
        assert r.passed and r.attempts == 1 and r.seeds_tried == (j.seed,) and r.chosen_seed == j.seed
        assert r.metrics[0]["object_expansion"] == 0.0 and r.metrics[0]["passed"]
        assert maxdiff(r.image, first) == 0


def _hub_cache_snapshot(cache: Path, repo: str, src: Path, commit: str) -> None:
    """Store the directory ``src`` in ``cache`` as huggingface_hub stores a downloaded snapshot:
    file contents in ``blobs/<sha256>``, ``snapshots/<commit>/<path>`` as relative symlinks to
    them, and ``refs/main`` holding the commit."""
    from huggingface_hub.file_download import repo_folder_name

    root = cache / repo_folder_name(repo_id=repo, repo_type="model")
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)


def test_hub_ids_resolve_from_the_local_cache_with_their_commit(tiny, tmp_path):
    cache = tmp_path / "hf"
    _hub_cache_snapshot(cache, "bggen-test/tiny-sd", tiny["base_model"], "a" * 40)
    _hub_cache_snapshot(cache, "bggen-test/tiny-cn", tiny["controlnet_model"], "b" * 40)

    def hub_cfg(**kw):
        return DiffusionConfig(base_model="bggen-test/tiny-sd", controlnet_model="bggen-test/tiny-cn",
                               cache_dir=str(cache), pixel_budget=BUDGET, steps=10, **kw)

    hub = DiffusionGenerator(hub_cfg())
    details = hub.identity_details()
    assert details["base_model"] == "bggen-test/tiny-sd@" + "a" * 40
    assert details["controlnet_model"] == "bggen-test/tiny-cn@" + "b" * 40
    local = DiffusionGenerator(_cfg(tiny))
    assert maxdiff(hub.generate([job(seed=9)])[0], local.generate([job(seed=9)])[0]) == 0
    # main moves to a new commit (same files): the identity follows it; a pinned revision does not
    _hub_cache_snapshot(cache, "bggen-test/tiny-sd", tiny["base_model"], "c" * 40)
    assert DiffusionGenerator(hub_cfg()).identity_details()["base_model"] == "bggen-test/tiny-sd@" + "c" * 40
    pinned = DiffusionGenerator(hub_cfg(base_revision="a" * 40))
    assert pinned.identity() == hub.identity()
    assert pinned.load().base.revision == "a" * 40  # the weights load at the commit named
    with pytest.raises(ModelNotFoundError, match="bggen-test/tiny-sd.*local cache"):
        load_pipeline(hub_cfg(base_revision="e" * 40))
    with pytest.raises(WrongModelTypeError, match="controlnet_model.*ControlNetModel"):
        load_pipeline(DiffusionConfig(base_model="bggen-test/tiny-sd", controlnet_model="bggen-test/tiny-sd",
                                      cache_dir=str(cache)))


_GENERATE_BY_HUB_ID = """
import json, sys
import numpy as np, torch
from bggen_assets.core.diffusion import DiffusionConfig, DiffusionGenerator
from bggen_assets.core.generation import GenerationJob

torch.set_num_threads(1)
job = np.load(sys.argv[1])
gen = DiffusionGenerator(DiffusionConfig(base_model="bggen-test/tiny-sd", controlnet_model="bggen-test/tiny-cn",
                                         pixel_budget=64 * 64, steps=10))
image = gen.generate([GenerationJob(canvas_rgb=job["canvas"], product_mask=job["mask"], prompt=str(job["prompt"]),
                                    negative_prompt="", seed=int(job["seed"]), theme_id="t")])[0]
np.save(sys.argv[2], image)
print(json.dumps(gen.identity_details()))
"""


def test_hub_ids_load_offline_from_the_cache_named_by_HF_HUB_CACHE(tiny, tmp_path):
    """No cache_dir: the hub cache is huggingface_hub's own default, here set by HF_HUB_CACHE (read
    when huggingface_hub is imported, hence a fresh interpreter), offline."""
    cache = tmp_path / "hub"
    _hub_cache_snapshot(cache, "bggen-test/tiny-sd", tiny["base_model"], "d" * 40)
    _hub_cache_snapshot(cache, "bggen-test/tiny-cn", tiny["controlnet_model"], "f" * 40)
    j = job(seed=9)
    np.savez(tmp_path / "job.npz", canvas=j.canvas_rgb, mask=j.product_mask, prompt=j.prompt, seed=j.seed)
    env = {k: v for k, v in os.environ.items() if k not in ("HUGGINGFACE_HUB_CACHE", "HF_HOME")}
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", _GENERATE_BY_HUB_ID, str(tmp_path / "job.npz"),
                          str(tmp_path / "out.npy")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    details = json.loads(run.stdout.strip().splitlines()[-1])
    assert details["base_model"] == "bggen-test/tiny-sd@" + "d" * 40
    assert details["controlnet_model"] == "bggen-test/tiny-cn@" + "f" * 40
    local = DiffusionGenerator(_cfg(tiny)).generate([j])[0]
    assert maxdiff(np.load(tmp_path / "out.npy"), local) == 0


def test_bad_jobs_are_named_before_any_work(gen):
    good = job()
    bad_mask = GenerationJob(canvas_rgb=good.canvas_rgb, product_mask=good.product_mask[:-1], prompt="x",
                             negative_prompt="", seed=1, theme_id="t")
    with pytest.raises(ValueError, match="job 1: product_mask shape"):
        gen.generate([good, bad_mask])
    bad_canvas = GenerationJob(canvas_rgb=good.canvas_rgb.astype(np.float32), product_mask=good.product_mask,
                               prompt="x", negative_prompt="", seed=1, theme_id="t")
    with pytest.raises(ValueError, match="job 0: canvas_rgb"):
        gen.generate([bad_canvas])
    assert DiffusionConfig.from_mapping({"steps": 5, "scheduler": "unipc"}).steps == 5
