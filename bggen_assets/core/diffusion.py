"""Background generation with Stable Diffusion + ControlNet-canny (diffusers).

``DiffusionGenerator`` implements the ``BackgroundGenerator`` contract of
``bggen_assets.core.generation``: for each ``GenerationJob`` (the positioned product on its bucket
canvas, its mask, the theme prompt, a seed) it returns the raw generated RGB image at the canvas
size, *before* the original product is cut back on top.

How a job is generated:

1. the canvas is resized to the model's *generation size*: one of a few shapes
   (:func:`generation_shape`: the pixel budget, multiples of ``shape_multiple`` = 64, the nearest
   aspect ratio, capped), so that a partition's jobs batch fully; ``shape_multiple`` 8 is the
   free rule (:func:`generation_size`: multiples of 8 at the canvas's own aspect);
2. the control image is the Canny map of the positioned product at that size
   (:func:`bggen_assets.core.edges.control_edges`, contour reinforced from the mask);
3. the prompt runs with classifier-free guidance against the negative prompt; the initial noise
   comes from a ``torch.Generator`` seeded with ``job.seed`` alone, one per job, so a job's image
   does not depend on the jobs it is batched with; prompt embeddings are computed per distinct
   prompt, not per batch, for the same reason;
4. with ``use_inpaint`` the product is also conditioned on directly: the ControlNet *inpainting*
   pipeline regenerates only the background region (the inverse of the mask) and keeps the
   product's latents, which reduces the product "growing" into the background;
5. the output is resized back to the canvas size.

Jobs are grouped by generation size and run ``batch_size`` at a time. Locating, checking and
loading the models (and the speed-ups applied on CUDA) is
:mod:`bggen_assets.core.diffusion_models`; the settings and their errors are
:mod:`bggen_assets.core.diffusion_config`, re-exported here.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Sequence

import cv2
import numpy as np

from bggen_assets.core import diffusion_config
from bggen_assets.core.diffusion_config import *  # noqa: F401,F403  the settings and errors, re-exported
from bggen_assets.core.diffusion_config import DiffusionConfig
from bggen_assets.core.diffusion_models import LoadedPipeline, load_pipeline, lora_identity, resolve_models
from bggen_assets.core.edges import control_edges

if TYPE_CHECKING:  # pragma: no cover
    from bggen_assets.core.generation import GenerationJob

__all__ = [*diffusion_config.__all__, "DiffusionGenerator", "config_generation_size", "generation_shape", "generation_shapes",
           "generation_size", "job_control_image", "resize_image", "shape_aspect_tolerance"]


# ------------------------------------------------------------------------------ generation size
def generation_size(
    canvas_w: int, canvas_h: int, pixel_budget: int = 512 * 512, max_aspect: float = 2.0,
    multiple: int = 8,
) -> tuple[int, int]:
    """The size ``(gw, gh)`` a canvas is generated at: both multiples of ``multiple`` (8), area
    about ``pixel_budget``, aspect ratio ``gw/gh`` that of the canvas capped to
    ``[1/max_aspect, max_aspect]``. A canvas more elongated than the cap is generated at the cap
    and stretched back to the canvas afterwards."""
    if canvas_w <= 0 or canvas_h <= 0:
        raise ValueError(f"canvas size must be positive, got {canvas_w}x{canvas_h}")
    if pixel_budget < multiple * multiple:
        raise ValueError(f"pixel_budget {pixel_budget} is below one {multiple}x{multiple} tile")
    if max_aspect < 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
    a = min(max(canvas_w / canvas_h, 1.0 / max_aspect), max_aspect)
    gh = math.sqrt(pixel_budget / a)
    gw = gh * a
    gw_i = max(multiple, int(round(gw / multiple)) * multiple)
    gh_i = max(multiple, int(round(gh / multiple)) * multiple)
    # rounding must not push the aspect ratio past the cap
    while gw_i / gh_i > max_aspect + 1e-9 and gw_i > multiple:
        gw_i -= multiple
    while gh_i / gw_i > max_aspect + 1e-9 and gh_i > multiple:
        gh_i -= multiple
    return gw_i, gh_i


SHAPE_MIN_FILL = 0.75  # a snapped shape keeps at least this much of the pixel budget
SHAPE_ASPECT_STEP = 1.12  # neighbouring shapes differ in aspect by at least this factor


def generation_shapes(pixel_budget: int = 512 * 512, max_aspect: float = 2.0, multiple: int = 64
                      ) -> tuple[tuple[int, int], ...]:
    """The small set of shapes canvases are generated at so that batches fill: per height (a
    multiple of ``multiple``), the widest multiple within the pixel budget and the aspect cap,
    keeping those with at least SHAPE_MIN_FILL of the budget; sorted by aspect, wide last.
    (512x512 budget, cap 2, multiple 64: 7 shapes from 320x640 to 640x320.)"""
    if pixel_budget < multiple * multiple:
        raise ValueError(f"pixel_budget {pixel_budget} is below one {multiple}x{multiple} tile")
    wide = set()
    for gh in range(multiple, int(math.sqrt(pixel_budget * max_aspect)) + multiple, multiple):
        gw = min(pixel_budget // gh, int(gh * max_aspect + 1e-9)) // multiple * multiple
        if gw >= gh and gw * gh >= SHAPE_MIN_FILL * pixel_budget:
            wide.add((gw, gh))
    if not wide:  # a budget too small for the rule: the one square tile
        wide.add((multiple, multiple))
    # a large budget has many: keep one per SHAPE_ASPECT_STEP of aspect (and the most elongated)
    kept: list[tuple[int, int]] = []
    for shape in sorted(wide, key=lambda s: (s[0] / s[1], -s[0] * s[1])):
        if not kept or shape[0] / shape[1] >= SHAPE_ASPECT_STEP * kept[-1][0] / kept[-1][1]:
            kept.append(shape)
    last = max(wide, key=lambda s: (s[0] / s[1], s[0] * s[1]))
    if kept[-1] != last:
        kept[-1 if len(kept) > 1 else len(kept):] = [last]
    shapes = set(kept) | {(h, w) for w, h in kept}  # as many tall shapes as wide ones
    return tuple(sorted(shapes, key=lambda s: s[0] / s[1]))


def generation_shape(canvas_w: int, canvas_h: int, pixel_budget: int = 512 * 512, max_aspect: float = 2.0,
                     multiple: int = 64) -> tuple[int, int]:
    """The shape of ``generation_shapes`` a canvas is generated at: the one nearest its aspect
    (capped like generation_size) on a log scale. The output is resized back to the canvas, so the
    crop geometry stays exact; only the background is stretched, by at most half the aspect step
    between neighbouring shapes (``shape_aspect_tolerance``)."""
    if canvas_w <= 0 or canvas_h <= 0:
        raise ValueError(f"canvas size must be positive, got {canvas_w}x{canvas_h}")
    a = math.log(min(max(canvas_w / canvas_h, 1.0 / max_aspect), max_aspect))
    return min(generation_shapes(pixel_budget, max_aspect, multiple), key=lambda s: abs(math.log(s[0] / s[1]) - a))


def config_generation_size(cfg: DiffusionConfig, canvas_w: int, canvas_h: int) -> tuple[int, int]:
    """The generation size of a canvas under a config: its shape (generation_shape), or with
    ``shape_multiple`` 8 the free rule (generation_size: every canvas at its own aspect)."""
    if cfg.shape_multiple <= 8:
        return generation_size(canvas_w, canvas_h, cfg.pixel_budget, cfg.max_aspect)
    return generation_shape(canvas_w, canvas_h, cfg.pixel_budget, cfg.max_aspect, cfg.shape_multiple)


def shape_aspect_tolerance(pixel_budget: int = 512 * 512, max_aspect: float = 2.0, multiple: int = 64) -> float:
    """The most a canvas's (capped) aspect is stretched by snapping to a shape, as a factor >= 1."""
    logs = [math.log(w / h) for w, h in generation_shapes(pixel_budget, max_aspect, multiple)]
    edges = [max(logs[0] - (-math.log(max_aspect)), 0.0), max(math.log(max_aspect) - logs[-1], 0.0)]
    gaps = [(b - a) / 2 for a, b in zip(logs, logs[1:])]
    return math.exp(max(edges + gaps))


# ------------------------------------------------------------------------------------- generator
def resize_image(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """``img`` at ``w×h``: area-averaged when shrinking, cubic when enlarging (as is if it fits)."""
    if img.shape[1] == w and img.shape[0] == h:
        return img
    shrink = w * h < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def _resize_mask(mask: np.ndarray, w: int, h: int) -> np.ndarray:
    if mask.shape == (h, w):
        return mask.astype(bool)
    m = cv2.resize(mask.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_AREA)
    return m >= 128


def job_control_image(cfg: DiffusionConfig, job: Any, gw: int, gh: int) -> np.ndarray:
    """The Canny control map of a job at generation size ``gw×gh``: canvas and mask resized,
    then :func:`~bggen_assets.core.edges.control_edges` with the config's edge settings."""
    canvas = resize_image(np.asarray(job.canvas_rgb), gw, gh)
    mask = _resize_mask(np.asarray(job.product_mask), gw, gh)
    return control_edges(canvas, mask, low=cfg.edge_low, high=cfg.edge_high,
                         contour_thickness=cfg.contour_thickness,
                         reinforce_contour=cfg.reinforce_contour)


def inpaint_condition(jobs: Sequence[Any], gw: int, gh: int):
    """The control image of an inpainting ControlNet (control_v11p_sd15_inpaint's convention): the
    canvas in [0, 1] with the region to regenerate (the background) set to -1, (B, 3, gh, gw)."""
    import torch

    out = []
    for j in jobs:
        img = resize_image(np.asarray(j.canvas_rgb), gw, gh).astype(np.float32) / 255.0
        img[~_resize_mask(np.asarray(j.product_mask), gw, gh)] = -1.0
        out.append(img.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


class DiffusionGenerator:
    """Stable Diffusion + ControlNet background generator (the ``BackgroundGenerator`` contract).

    The pipeline is loaded on first use (or by :meth:`load`, which is where configuration errors
    surface). ``loaded``: a pipeline already loaded for the same models (e.g. by another generator
    that differs only in steps), used instead of loading again. ``log`` receives progress lines."""

    def __init__(self, config: DiffusionConfig | None = None, *,
                 log: Callable[[str], None] | None = None, loaded: LoadedPipeline | None = None) -> None:
        self.config = config or DiffusionConfig()
        c = self.config
        if loaded is not None and (loaded.base.name, loaded.controlnet.name, loaded.inpaint, loaded.lora) != (
                c.base_model, c.active_controlnet[1], c.use_inpaint, lora_identity(c)):
            raise ValueError(
                f"the loaded pipeline ({loaded.base.name!r} + {loaded.controlnet.name!r}, inpaint "
                f"{loaded.inpaint}, lora {loaded.lora}) is not the configured one ({c.base_model!r} + "
                f"{c.active_controlnet[1]!r}, inpaint {c.use_inpaint}, lora {lora_identity(c)})")
        self._log = log or (lambda _m: None)
        self._loaded = loaded
        self._identity: str | None = None
        self._prompt_cache: OrderedDict[tuple[str, str], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    # -- contract
    def identity(self) -> str:
        """``diffusion-v1-<hash>``: a hash over the models' identities (hub id + commit, or a
        content hash of a local directory) and every setting that changes the pixels (steps,
        guidance, ControlNet scale, scheduler, pipeline kind, generation size rule, edge settings,
        default negative prompt). Device, dtype, batch size and the speed-ups are left out: they
        change pixels only within floating-point tolerance."""
        if self._identity is None:
            self._identity = "diffusion-v1-" + hashlib.sha256(
                json.dumps(self.identity_details(), sort_keys=True).encode()
            ).hexdigest()[:32]
        return self._identity

    def identity_details(self) -> dict[str, Any]:
        c = self.config
        if self._loaded is not None:
            refs = (self._loaded.base, self._loaded.controlnet)
        else:
            refs = resolve_models(c)
        d: dict[str, Any] = {
            "base_model": refs[0].identity,
            "controlnet_model": refs[1].identity,
            "pipeline": "controlnet-inpaint" if c.use_inpaint else "controlnet",
            "steps": c.steps,
            "guidance_scale": c.guidance_scale,
            "controlnet_conditioning_scale": c.controlnet_conditioning_scale,
            "scheduler": c.scheduler,
            "pixel_budget": c.pixel_budget,
            "max_aspect": c.max_aspect,
            "shape_multiple": c.shape_multiple,
            "lora": lora_identity(c),
            "control": "inpaint" if c.inpaint_conditioned else "canny",
            "edges": [c.edge_low, c.edge_high, c.contour_thickness, c.reinforce_contour],
            "default_negative_prompt": c.negative_prompt,
        }
        if c.use_inpaint:
            d["inpaint_strength"] = c.inpaint_strength
        return d

    def generate(self, jobs: Sequence["GenerationJob"]) -> list[np.ndarray]:
        jobs = list(jobs)
        for i, job in enumerate(jobs):
            self._check_job(i, job)
        if not jobs:
            return []
        pipe = self.load().pipeline
        c = self.config
        groups: dict[tuple[int, int], list[int]] = {}
        for i, job in enumerate(jobs):
            h, w = job.canvas_rgb.shape[:2]
            groups.setdefault(self.generation_shape(w, h), []).append(i)
        chunks = [
            (size, idxs[k:k + c.batch_size])
            for size, idxs in groups.items()
            for k in range(0, len(idxs), c.batch_size)
        ]
        out: list[np.ndarray | None] = [None] * len(jobs)
        t_all = time.perf_counter()
        for n, ((gw, gh), idxs) in enumerate(chunks, 1):
            t0 = time.perf_counter()
            with self._lock:
                images = self._run_batch(pipe, [jobs[i] for i in idxs], gw, gh)
            for i, img in zip(idxs, images):
                h, w = jobs[i].canvas_rgb.shape[:2]
                out[i] = resize_image(img, w, h)
            self._log(
                f"diffusion: batch {n}/{len(chunks)}: {len(idxs)} image(s) at {gw}x{gh} in "
                f"{time.perf_counter() - t0:.2f}s"
            )
        self._log(f"diffusion: {len(jobs)} image(s) in {len(chunks)} batch(es), "
                  f"{time.perf_counter() - t_all:.2f}s")
        return out  # type: ignore[return-value]

    def generation_shape(self, canvas_w: int, canvas_h: int) -> tuple[int, int]:
        """The size a canvas is generated at: one of a few shapes (``shape_multiple``), so that
        the pipeline can batch the jobs of a partition by it (steps.generate_step)."""
        return config_generation_size(self.config, canvas_w, canvas_h)

    # -- helpers
    def load(self) -> LoadedPipeline:
        """Load the pipeline now (idempotent); configuration errors are raised here."""
        if self._loaded is None:
            self._loaded = load_pipeline(self.config, self._log)
        return self._loaded

    @staticmethod
    def _check_job(i: int, job: Any) -> None:
        img = np.asarray(job.canvas_rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"job {i}: canvas_rgb must be H×W×3 uint8, got {img.shape} {img.dtype}")
        if np.asarray(job.product_mask).shape != img.shape[:2]:
            raise ValueError(
                f"job {i}: product_mask shape {np.asarray(job.product_mask).shape} != canvas {img.shape[:2]}"
            )

    def _embeddings(self, pipe, prompt: str, negative: str):
        """Prompt embeddings per distinct (prompt, negative prompt), computed alone (not in a
        batch) so that they are the same whatever the batch, and cached (themes repeat)."""
        import torch

        key = (prompt, negative)
        hit = self._prompt_cache.get(key)
        if hit is not None:
            self._prompt_cache.move_to_end(key)
            return hit
        with torch.inference_mode():
            pos, neg = pipe.encode_prompt(
                prompt, pipe.device, 1, self.config.guidance_scale > 1, negative_prompt=negative
            )
        self._prompt_cache[key] = (pos, neg)
        while len(self._prompt_cache) > self.config.prompt_cache_size:
            self._prompt_cache.popitem(last=False)
        return pos, neg

    def control_image(self, job: Any, gw: int, gh: int) -> np.ndarray:
        """The Canny control map of a job at generation size ``gw×gh``."""
        return job_control_image(self.config, job, gw, gh)

    def _run_batch(self, pipe, jobs: list[Any], gw: int, gh: int) -> list[np.ndarray]:
        import torch
        from PIL import Image

        c = self.config
        cfg_on = c.guidance_scale > 1
        pos, neg = [], []
        for job in jobs:
            p, n = self._embeddings(pipe, job.prompt, job.negative_prompt or c.negative_prompt)
            pos.append(p)
            neg.append(n)
        kwargs: dict[str, Any] = dict(
            prompt_embeds=torch.cat(pos),
            negative_prompt_embeds=torch.cat(neg) if cfg_on else None,
            height=gh,
            width=gw,
            num_inference_steps=c.steps,
            guidance_scale=c.guidance_scale,
            controlnet_conditioning_scale=c.controlnet_conditioning_scale,
            # CPU generators: the same seed gives the same noise on every device
            generator=[torch.Generator("cpu").manual_seed(int(j.seed) % (1 << 64)) for j in jobs],
            output_type="np",
        )
        if c.inpaint_conditioned:  # the inpainting ControlNet sees the canvas, background masked out
            controls = inpaint_condition(jobs, gw, gh)
        else:
            controls = [Image.fromarray(self.control_image(j, gw, gh)) for j in jobs]
        if c.use_inpaint:
            kwargs["image"] = [Image.fromarray(resize_image(np.asarray(j.canvas_rgb), gw, gh)) for j in jobs]
            kwargs["mask_image"] = [
                Image.fromarray((~_resize_mask(np.asarray(j.product_mask), gw, gh)).astype(np.uint8) * 255)
                for j in jobs
            ]
            kwargs["control_image"] = controls
            kwargs["strength"] = c.inpaint_strength
        else:
            kwargs["image"] = controls
        with torch.inference_mode():
            result = pipe(**kwargs)
        imgs = np.asarray(result.images, dtype=np.float32)
        return [np.clip(np.rint(im * 255.0), 0, 255).astype(np.uint8) for im in imgs]
