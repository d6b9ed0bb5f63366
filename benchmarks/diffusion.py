"""Diffusion throughput: a plain diffusers loop vs bggen's DiffusionGenerator, side by side.

The same set of bucket jobs (several canvas shapes, several prompts, one seed each) two ways:

(a) plain: one ``StableDiffusionControlNetPipeline`` call per image, float16 on a GPU / float32
    on a CPU, the same scheduler (DPM++ 2M) and steps, as a competent user would write it;
(b) ours:  ``DiffusionGenerator``: jobs batched by generation size, prompt embeddings cached,
    SDPA attention, fused QKV, channels-last, ``torch.compile`` (on CUDA; ``--no-compile``).
(c) optional (``--few-steps N``): ours with N denoising steps: faster, NOT the same outputs.

It first prints the quality gates' scores on the constructed images of tests/gate_scenes.py
(edge leakage of a clean product and of a halo drawn outside it, object expansion of a clean and of
an extended product); ``--gates-only`` prints just those.

Both paths get the same control edges (the project's ``control_edges``) and per-job seeds from a
CPU ``torch.Generator``, so outputs are comparable pixel by pixel: the largest and mean absolute
pixel differences between (a) and (b) are printed.

Models: on a GPU, Stable Diffusion 1.5's real UNet, ControlNet, VAE and CLIP text model
architectures with random weights (configs written below; the tokenizer is the tiny written
vocabulary, which does not change the cost), 512×512 budget, 20 steps, guidance 7.5. On a CPU,
the tiny offline pipeline (``bggen_assets.tiny_pipeline``) at 64×64. ``--base-model`` /
``--controlnet-model`` use real weights instead.

    .venv/bin/python benchmarks/diffusion.py --quick          # CPU, tiny model, seconds
    .venv/bin/python benchmarks/diffusion.py --gates-only     # the quality gates' figures only
    .venv/bin/python benchmarks/diffusion.py                  # GPU: SD 1.5 architecture
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bggen_assets.core.diffusion import (  # noqa: E402
    DiffusionConfig,
    DiffusionGenerator,
    config_generation_size,
    job_control_image,
    resize_image,
)
from bggen_assets.core.diffusion_models import make_scheduler  # noqa: E402
from bggen_assets.core.generation import GenerationJob  # noqa: E402

PROMPTS = [
    "a product photo on a marble kitchen counter, soft morning light",
    "a product on a sandy beach at sunset, bokeh",
    "a product in a minimalist studio, pastel backdrop, soft shadows",
]
# bucket canvas shapes (w, h): square, 1.91:1 link ad, 4:5 portrait, a wide banner (aspect capped)
SHAPES = [(1080, 1080), (1200, 628), (1080, 1350), (970, 250)]


def build_sd15_random(out_dir: Path, device: str) -> dict[str, Path]:
    """SD 1.5's architecture (UNet, ControlNet-canny, VAE, CLIP ViT-L/14 text model) with random
    weights, saved in diffusers layout."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from bggen_assets.tiny_pipeline import _vocab
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(_vocab()))
    (out_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"),
                              model_max_length=77)
    torch.manual_seed(0)
    with torch.device(device):
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
            projection_dim=768, bos_token_id=0, eos_token_id=1, pad_token_id=1))
        unet = UNet2DConditionModel(  # SD 1.5 unet/config.json
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                              "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                            "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
            act_fn="silu", center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True,
            freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5)
        controlnet = ControlNetModel.from_unet(  # sd-controlnet-canny: conditioning (16, 32, 96, 256)
            unet, conditioning_embedding_out_channels=(16, 32, 96, 256))
        vae = AutoencoderKL(  # SD 1.5 vae/config.json
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            act_fn="silu", norm_num_groups=32)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    paths = {"base_model": out_dir / "sd", "controlnet_model": out_dir / "controlnet"}
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # "modules to keep in float32: []" notes from .to(float16)
    try:
        pipe.to(torch.float16).save_pretrained(paths["base_model"])
        controlnet.to(torch.float16).save_pretrained(paths["controlnet_model"])
    finally:
        dlogging.set_verbosity(level)
    return paths


def make_jobs(n: int, scale: float) -> list[GenerationJob]:
    """n bucket jobs: canvas shapes cycle through SHAPES (scaled), prompts through PROMPTS."""
    jobs = []
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = SHAPES[i % len(SHAPES)]
        w, h = max(16, int(w * scale)), max(16, int(h * scale))
        canvas = np.full((h, w, 3), 127, np.uint8)
        mask = np.zeros((h, w), bool)
        pw, ph = int(w * 0.3), int(h * 0.5)
        x0, y0 = (w - pw) // 2, (h - ph) // 2
        mask[y0:y0 + ph, x0:x0 + pw] = True
        canvas[mask] = rng.integers(0, 255, 3)
        canvas[y0 + ph // 3: y0 + ph // 2, x0: x0 + pw] = (250, 250, 250)
        jobs.append(GenerationJob(canvas_rgb=canvas, product_mask=mask, prompt=PROMPTS[i % len(PROMPTS)],
                                  negative_prompt="", seed=1000 + i, theme_id=f"t{i % len(PROMPTS)}"))
    return jobs


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_pipeline(paths, device: str, dtype, scheduler: str):
    """What a competent user writes: from_pretrained, the scheduler, .to(device)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    cn = ControlNetModel.from_pretrained(paths["controlnet_model"], dtype=dtype)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        paths["base_model"], controlnet=cn, dtype=dtype, safety_checker=None,
        requires_safety_checker=False)
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run_plain(pipe, jobs, cfg: DiffusionConfig) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for j in jobs:
        h, w = j.canvas_rgb.shape[:2]
        gw, gh = config_generation_size(cfg, w, h)  # the generator's own rule (shapes)
        edges = Image.fromarray(job_control_image(cfg, j, gw, gh))
        img = pipe(j.prompt, image=edges, negative_prompt=j.negative_prompt or cfg.negative_prompt,
                   height=gh, width=gw, num_inference_steps=cfg.steps,
                   guidance_scale=cfg.guidance_scale,
                   controlnet_conditioning_scale=cfg.controlnet_conditioning_scale,
                   generator=torch.Generator("cpu").manual_seed(j.seed), output_type="np").images[0]
        out.append(resize_image(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), w, h))
    return out


def timed(fn, device: str) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    r = fn()
    sync(device)
    return time.perf_counter() - t0, r


def diff(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[int, float]:
    d = [np.abs(x.astype(np.int16) - y.astype(np.int16)) for x, y in zip(a, b)]
    return int(max(x.max() for x in d)), float(np.mean([x.mean() for x in d]))


def print_gate_figures() -> None:
    """The quality gates' scores on constructed images (the cases tests/core/test_quality_gates.py checks)."""
    from gate_scenes import MASK, H, W, bottle_mask, halo, left_half_halo, scene

    from bggen_assets.core.masking import classical_mask
    from bggen_assets.core.quality_gates import edge_leakage, object_expansion

    def segment(img):
        return classical_mask(img).mask

    def scores(values):
        return "/".join(f"{v:.3f}" for v in values)

    offsets, extensions = (2, 3, 4), (10, 25, 40)
    _, _, w, h = cv2.boundingRect(MASK.astype(np.uint8))
    print(f"quality gates on constructed images (tests/gate_scenes.py: {W}x{H}, a {w}x{h} px bottle):")
    print("  edge leakage, clean product: "
          + ", ".join(f"{bg} {edge_leakage(scene(bg=bg), MASK):.3f}" for bg in ("plain", "busy")))
    for bg in ("plain", "busy"):
        print(f"  edge leakage, halo {'/'.join(map(str, offsets))} px outside the product, {bg}: "
              + scores(edge_leakage(halo(scene(bg=bg), offset=o), MASK) for o in offsets))
    print(f"  edge leakage, halo 12 px outside (beyond the ring), plain: "
          f"{edge_leakage(halo(scene(), offset=12), MASK):.3f}")
    print(f"  edge leakage, halo 3 px outside along the left half only, plain: "
          f"{edge_leakage(left_half_halo(offset=3), MASK):.3f}")
    print("  object expansion (classical masker), clean product: "
          + ", ".join(f"{bg} {object_expansion(scene(bg=bg), MASK, segment):.3f}" for bg in ("plain", "busy")))
    grown = [bottle_mask(e) for e in extensions]
    print(f"  object expansion, product extended {'/'.join(map(str, extensions))} px down "
          f"(added area / product area {scores((g & ~MASK).sum() / MASK.sum() for g in grown)}): "
          + scores(object_expansion(scene(g), MASK, segment) for g in grown))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (CPU: a few seconds)")
    ap.add_argument("--gates-only", action="store_true", help="print the quality gates' figures only")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--images", type=int, default=None, help="number of jobs (default 32 GPU, 16 CPU)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None, help="ours: batch size (default 8 GPU, 4 CPU)")
    ap.add_argument("--pixel-budget", type=int, default=None, help="default 512*512 GPU, 64*64 CPU")
    ap.add_argument("--no-compile", action="store_true", help="ours: no torch.compile")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's default)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's); 1 is steadier on a busy CPU")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (best counts)")
    ap.add_argument("--few-steps", type=int, default=0, help="also run (c): ours with N steps")
    ap.add_argument("--model", choices=["auto", "tiny", "sd15-random"], default="auto")
    ap.add_argument("--base-model", default=None, help="real weights: diffusers SD 1.5 dir or hub id")
    ap.add_argument("--controlnet-model", default=None, help="real weights: ControlNet-canny dir or hub id")
    ap.add_argument("--workdir", default=None, help="where to build the random-weight models")
    args = ap.parse_args(argv)

    print_gate_figures()
    if args.gates_only:
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    on_gpu = device.startswith("cuda")
    dtype = torch.float16 if on_gpu else torch.float32
    model = args.model if args.model != "auto" else ("sd15-random" if on_gpu else "tiny")
    n = args.images or ((8 if args.quick else 32) if on_gpu else (8 if args.quick else 16))
    batch = args.batch_size or (8 if on_gpu else 4)
    budget = args.pixel_budget or (512 * 512 if model != "tiny" else 64 * 64)
    # the jobs' canvases: real bucket sizes on the GPU, scaled down for the tiny model
    scale = 1.0 if model != "tiny" else 0.1

    tmp = tempfile.TemporaryDirectory(prefix="bggen-bench-")
    work = Path(args.workdir or tmp.name)
    t0 = time.perf_counter()
    if args.base_model:
        paths = {"base_model": args.base_model, "controlnet_model": args.controlnet_model
                 or "lllyasviel/sd-controlnet-canny"}
        model = "real weights"
    elif model == "tiny":
        from bggen_assets.tiny_pipeline import build_tiny_pipeline
        paths = build_tiny_pipeline(work / "tiny")
    else:
        paths = build_sd15_random(work / "sd15", device)
    t_build = time.perf_counter() - t0

    cfg = DiffusionConfig(
        base_model=str(paths["base_model"]), controlnet_model=str(paths["controlnet_model"]),
        device=device, steps=args.steps, pixel_budget=budget, batch_size=batch,
        compile=False if args.no_compile else None, compile_mode=args.compile_mode,
    )
    jobs = make_jobs(n, scale)
    sizes = sorted({config_generation_size(cfg, j.canvas_rgb.shape[1], j.canvas_rgb.shape[0]) for j in jobs})
    dev_name = torch.cuda.get_device_name(0) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev_name}; torch {torch.__version__}; model: {model} (built in {t_build:.1f}s)")
    print(f"jobs: {n} ({len(SHAPES)} canvas shapes -> generation sizes {sizes}), {len(PROMPTS)} prompts, "
          f"{args.steps} steps, guidance {cfg.guidance_scale}, scheduler {cfg.scheduler}, "
          f"dtype {str(dtype).replace('torch.', '')}")

    # both loaded side by side; timed passes alternate (a), (b), (c) for --repeats rounds and the
    # best pass of each counts, so a noisy machine disturbs both alike
    plain = plain_pipeline(paths, device, dtype, cfg.scheduler)
    ours = DiffusionGenerator(cfg)
    t_load, _ = timed(ours.load, device)
    fast = None
    if args.few_steps:  # the same loaded (and compiled) pipeline, fewer steps
        fast = DiffusionGenerator(dataclasses.replace(cfg, steps=args.few_steps), loaded=ours.load())

    warm_jobs = [next(j for j in jobs if config_generation_size(cfg, j.canvas_rgb.shape[1], j.canvas_rgb.shape[0]) == s)
                 for s in sizes]
    t_warm_a, _ = timed(lambda: run_plain(plain, warm_jobs, cfg), device)
    # warm-up compiles every (batch, size) shape; a second pass settles what compile leaves lazy
    compiled = on_gpu and not args.no_compile
    t_warm_b = sum(timed(lambda: ours.generate(jobs), device)[0] for _ in range(2 if compiled else 1))
    if fast is not None:
        timed(lambda: fast.generate(jobs), device)

    t_a, t_b, t_c, ratios = [], [], [], []
    out_a = out_b = out_c = None
    for _ in range(args.repeats):
        ta, out_a = timed(lambda: run_plain(plain, jobs, cfg), device)
        tb, out_b = timed(lambda: ours.generate(jobs), device)
        t_a.append(ta)
        t_b.append(tb)
        ratios.append(ta / tb)
        if fast is not None:
            tc, out_c = timed(lambda: fast.generate(jobs), device)
            t_c.append(tc)
    applied = f"[{', '.join(ours.load().speedups)}]"

    def line(name, t):
        return (f"{name:<38} {n / t:8.3f} images/s  {n * args.steps / t:9.2f} steps/s  "
                f"({t:.2f}s for {n} images, best of {args.repeats})")

    print(line("(a) plain diffusers, 1 image per call", min(t_a)))
    print(line(f"(b) ours, batch {batch} {applied}", min(t_b)))
    print(f"speed-up (b)/(a): {min(t_a) / min(t_b):.2f}x best vs best; per round "
          f"{', '.join(f'{r:.2f}x' for r in ratios)}  (warm-up: plain {t_warm_a:.1f}s, ours "
          f"{t_warm_b:.1f}s{' incl. compile' if compiled else ''}; load {t_load:.1f}s)")
    mx, mean = diff(out_a, out_b)
    print(f"same seeds, (a) vs (b): largest pixel difference {mx}, mean {mean:.3f} (0-255 scale)")
    if fast is not None:
        mx_c, mean_c = diff(out_a, out_c)
        print(line(f"(c) FEW-STEP: ours, {args.few_steps} steps", min(t_c)).replace("steps/s", "steps/s*"))
        print(f"    (c) is NOT the same output: {min(t_a) / min(t_c):.2f}x vs (a); differs from (a) by up "
              f"to {mx_c} (mean {mean_c:.1f}); *steps/s counted at {args.steps} steps/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
