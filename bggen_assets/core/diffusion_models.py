"""The diffusion models: where they are, what they are, their identity, and loading them.

A model field of :class:`~bggen_assets.core.diffusion_config.DiffusionConfig` names a local
diffusers directory or a Hugging Face hub id. :func:`resolve_model` finds the model's files and
checks their kind without loading weights:

* a local directory is read where it is; its identity is ``local-sha256:<hash>`` over the paths
  and contents of the files a load reads (configs, tokenizer files, default weights; not
  single-file checkpoints or fp16/EMA variants lying beside them);
* a hub id is resolved by huggingface_hub itself: ``snapshot_download`` of the config files (from
  the local cache with ``local_files_only``, else downloading those configs only) gives the
  snapshot folder, and ``scan_cache_dir`` gives that snapshot's commit; the identity is
  ``hub_id@commit`` and the weights are later loaded at that very commit.

:func:`load_pipeline` loads the diffusers pipeline on the device and returns a
:class:`LoadedPipeline`: the pipeline beside what bggen knows about it (the models' references,
device, dtype, the speed-ups applied), so that nothing is stored on the diffusers object.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bggen_assets.core.diffusion_config import (
    DeviceUnavailableError,
    DiffusionConfig,
    ModelLoadError,
    ModelNotFoundError,
    WrongModelTypeError,
)

__all__ = [
    "ModelRef",
    "LoadedPipeline",
    "resolve_model",
    "resolve_models",
    "lora_identity",
    "resolve_device",
    "resolve_dtype",
    "make_scheduler",
    "load_pipeline",
]

# Pipelines whose components are those of SD 1.x/2.x (one CLIP text encoder, a 2D conditional UNet).
_SD_PIPELINE_CLASSES = {
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionControlNetPipeline",
    "StableDiffusionControlNetImg2ImgPipeline",
    "StableDiffusionControlNetInpaintPipeline",
}
_SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

# The config file that says what a folder holds, per kind of model the fields expect.
_CONFIG_FILE = {"pipeline": "model_index.json", "controlnet": "config.json"}
_KIND_NEEDED = {"pipeline": "a diffusers pipeline (model_index.json)",
                "controlnet": "a ControlNetModel (config.json)"}
# What resolving a hub id fetches (or finds in the cache): enough to check the kind of model and
# that a ControlNet fits the base model's UNet, without any weights.
_HUB_CONFIG_PATTERNS = ["model_index.json", "config.json", "unet/config.json"]


@dataclass(frozen=True)
class ModelRef:
    """A located, type-checked model."""

    field: str  # the config field, for messages
    name: str  # as configured
    location: str  # local directory or hub id, as handed to from_pretrained
    is_local: bool
    revision: str | None  # for a hub id: the resolved commit the weights load at
    identity: str  # local-sha256:<hash> or hub_id@commit
    folder: Path  # where its config files are: the directory, or the hub cache snapshot
    config: dict = field(hash=False, compare=False)  # model_index.json or config.json


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or "\\" in name
        or name.count("/") != 1
        or os.path.exists(name)
    )


_HASH_CACHE: dict[tuple, str] = {}
_HASH_LOCK = threading.Lock()


def _loaded_files(folder: Path) -> list[Path]:
    """The files diffusers/transformers load from one model folder: configs, tokenizer files and
    the default weights (``*.safetensors`` if any, else ``*.bin``; no ``.fp16``-style variants)."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin") and p.name.count(".") == 1]
    if any(p.suffix == ".safetensors" for p in weights):
        weights = [p for p in weights if p.suffix == ".safetensors"]
    other = [p for p in files if p.suffix not in (".safetensors", ".bin", ".ckpt", ".pt", ".onnx",
                                                   ".msgpack", ".h5", ".pb")]
    return other + weights


def _model_files(root: Path, kind: str, config: dict) -> list[Path]:
    if kind == "pipeline":
        files = [root / "model_index.json"]
        for comp, spec in sorted(config.items()):
            if not comp.startswith("_") and isinstance(spec, list) and spec and spec[0]:
                files += _loaded_files(root / comp)
    else:
        files = _loaded_files(root)
    return sorted(set(files)) or sorted(p for p in root.rglob("*") if p.is_file())


def _dir_content_hash(root: Path, files: list[Path]) -> str:
    """sha256 over (relative path, sha256 of content) of ``files`` under ``root``. Computed once
    per process for a given listing of (path, size, mtime)."""
    listing = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(root.resolve()), listing)
    with _HASH_LOCK:
        if key in _HASH_CACHE:
            return _HASH_CACHE[key]
    h = hashlib.sha256()
    for p, (rel, _, _) in zip(files, listing):
        fh = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                fh.update(chunk)
        h.update(rel.encode() + b"\0" + fh.hexdigest().encode() + b"\n")
    digest = h.hexdigest()
    with _HASH_LOCK:
        _HASH_CACHE[key] = digest
    return digest


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WrongModelTypeError(f"{path} is not a readable JSON config: {e}") from e


def _hub_snapshot(field_name: str, repo: str, revision: str | None, local_files_only: bool,
                  cache_dir: str | None) -> tuple[Path, str]:
    """The hub cache snapshot folder holding ``repo``'s configs at ``revision``, and its commit."""
    from huggingface_hub import scan_cache_dir, snapshot_download

    try:
        folder = Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir,
                                        local_files_only=local_files_only,
                                        allow_patterns=_HUB_CONFIG_PATTERNS))
    except (OSError, ValueError) as e:  # LocalEntryNotFoundError, RepositoryNotFoundError, offline...
        offline = local_files_only or os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
        hint = (
            " (offline: local_files_only/HF_HUB_OFFLINE; download it beforehand with "
            f"`huggingface-cli download {repo}` or point {field_name} at a local directory)"
            if offline else ""
        )
        raise ModelNotFoundError(
            f"{field_name}={repo!r}: no such local directory, and as a hub id it is not in the local "
            f"cache nor downloadable{hint}: {type(e).__name__}: {e}"
        ) from e
    for cached in scan_cache_dir(cache_dir).repos:
        if cached.repo_id == repo and cached.repo_type == "model":
            for rev in cached.revisions:
                if rev.snapshot_path.resolve() == folder.resolve():
                    return folder, rev.commit_hash
    raise ModelNotFoundError(
        f"{field_name}={repo!r}: huggingface_hub returned the snapshot {folder}, but its cache scan "
        f"does not list it (a cache_dir that is not a Hugging Face hub cache?)"
    )


def resolve_model(field_name: str, name: str, revision: str | None, local_files_only: bool,
                  kind: str, cache_dir: str | None = None) -> ModelRef:
    """Locate a model and check it is of ``kind`` ("pipeline" or "controlnet") without loading
    weights. Raises ModelNotFoundError / WrongModelTypeError."""
    cfg_file = _CONFIG_FILE[kind]
    other_kind = "controlnet" if kind == "pipeline" else "pipeline"
    local = Path(os.path.expanduser(name))
    if local.is_dir():
        folder, commit, where = local, None, "directory"
    elif _looks_like_path(name):
        raise ModelNotFoundError(f"{field_name}={name!r}: directory does not exist")
    else:
        folder, commit = _hub_snapshot(field_name, name, revision, local_files_only, cache_dir)
        where = "repository"

    if not (folder / cfg_file).is_file():
        what = ""
        other_file = folder / _CONFIG_FILE[other_kind]
        if other_file.is_file():
            what = f": the {where} holds a {_read_json(other_file).get('_class_name', '?')} {other_file.name}"
        raise WrongModelTypeError(f"{field_name}={name!r} is not {_KIND_NEEDED[kind]}{what}")
    config = _read_json(folder / cfg_file)
    cls = config.get("_class_name")
    if kind == "pipeline":
        if cls not in _SD_PIPELINE_CLASSES:
            raise WrongModelTypeError(
                f"{field_name}={name!r} holds a {cls} pipeline; a Stable Diffusion 1.x/2.x pipeline "
                f"is needed (one of {sorted(_SD_PIPELINE_CLASSES)})"
            )
        missing = [c for c in _SD_COMPONENTS if not (config.get(c) or [None])[0]]
        if missing:
            raise WrongModelTypeError(f"{field_name}={name!r}: model_index.json lacks {missing}")
    elif cls != "ControlNetModel":
        raise WrongModelTypeError(
            f"{field_name}={name!r} holds a {cls}; a ControlNetModel (e.g. "
            "lllyasviel/sd-controlnet-canny) is needed"
        )

    if commit is None:
        identity = "local-sha256:" + _dir_content_hash(folder, _model_files(folder, kind, config))
        return ModelRef(field_name, name, str(folder), True, revision, identity, folder, config)
    return ModelRef(field_name, name, name, False, commit, f"{name}@{commit}", folder, config)


def resolve_models(cfg: DiffusionConfig) -> tuple[ModelRef, ModelRef]:
    """The configured base pipeline and the ControlNet it runs with (the inpainting one with
    use_inpaint, when configured), located and type-checked."""
    field_name, name, revision = cfg.active_controlnet
    return (
        resolve_model("base_model", cfg.base_model, cfg.base_revision, cfg.local_files_only,
                      "pipeline", cfg.cache_dir),
        resolve_model(field_name, name, revision, cfg.local_files_only, "controlnet", cfg.cache_dir),
    )


def lora_identity(cfg: DiffusionConfig) -> str | None:
    """What the configured LoRA is, for the generator's identity: a content hash of a local file
    (or of a directory's weight files), else ``hub_id@revision``; with its weight name and scale.
    A local path that does not exist is a ModelNotFoundError."""
    if cfg.lora is None:
        return None
    local = Path(os.path.expanduser(cfg.lora))
    if local.is_file():
        files = [local]
    elif local.is_dir():
        files = sorted(f for f in local.iterdir() if f.suffix in (".safetensors", ".bin")
                       and (cfg.lora_weight_name is None or f.name == cfg.lora_weight_name))
        if not files:
            raise ModelNotFoundError(f"lora={cfg.lora!r}: the directory holds no LoRA weights "
                                     f"(*.safetensors{', ' + cfg.lora_weight_name if cfg.lora_weight_name else ''})")
    elif _looks_like_path(cfg.lora):
        raise ModelNotFoundError(f"lora={cfg.lora!r}: no such file or directory")
    else:
        return f"{cfg.lora}@{cfg.lora_revision or 'main'}/{cfg.lora_weight_name or ''}*{cfg.lora_scale:g}"
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).hexdigest().encode())
    return f"local-sha256:{h.hexdigest()[:32]}*{cfg.lora_scale:g}"


def _apply_lora(pipe: Any, cfg: DiffusionConfig) -> None:
    """Load the LoRA into the base model with diffusers' public API and fuse it (no adapter
    layers stay: a fused LoRA costs nothing per step)."""
    local = Path(os.path.expanduser(cfg.lora))
    kw: dict[str, Any] = {}
    if cfg.lora_weight_name:
        kw["weight_name"] = cfg.lora_weight_name
    if local.is_file():
        where: Any = str(local.parent)
        kw["weight_name"] = local.name
    else:
        where = str(local) if local.is_dir() else cfg.lora
        if not local.is_dir():
            kw.update(revision=cfg.lora_revision, local_files_only=cfg.local_files_only, cache_dir=cfg.cache_dir)
    try:
        pipe.load_lora_weights(where, adapter_name="fewstep", **kw)
        pipe.fuse_lora(lora_scale=cfg.lora_scale, adapter_names=["fewstep"])
        pipe.unload_lora_weights()
    except Exception as e:
        raise ModelLoadError(f"lora={cfg.lora!r} failed to load into base_model={cfg.base_model!r}: {e}") from e


def _check_controlnet_fits(cfg: DiffusionConfig, base: ModelRef, controlnet: ModelRef) -> None:
    unet_config = base.folder / "unet" / "config.json"
    unet_dim = _read_json(unet_config).get("cross_attention_dim") if unet_config.is_file() else None
    cn_dim = controlnet.config.get("cross_attention_dim")
    if unet_dim is not None and cn_dim is not None and unet_dim != cn_dim:
        raise WrongModelTypeError(
            f"controlnet_model={cfg.controlnet_model!r} (cross_attention_dim={cn_dim}) does not fit "
            f"base_model={cfg.base_model!r} (cross_attention_dim={unet_dim}): a ControlNet trained "
            "for another Stable Diffusion version"
        )


# ------------------------------------------------------------------------------- device & loading
def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"DiffusionConfig.device={device!r} but CUDA is not available here "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); use 'auto' or 'cpu'"
            )
        idx = int(device.split(":")[1]) if ":" in device else 0
        if idx >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"DiffusionConfig.device={device!r} but only {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]


def make_scheduler(name: str, base_config: Any):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        LCMScheduler,
        TCDScheduler,
        UniPCMultistepScheduler,
    )

    cls = {
        "dpmpp": DPMSolverMultistepScheduler,
        "unipc": UniPCMultistepScheduler,
        "euler_a": EulerAncestralDiscreteScheduler,
        "ddim": DDIMScheduler,
        "lcm": LCMScheduler,
        "tcd": TCDScheduler,
    }[name]
    return cls.from_config(base_config)


def _auto(flag: bool | None, device: str) -> bool:
    return device.startswith("cuda") if flag is None else bool(flag)


@dataclass(frozen=True)
class LoadedPipeline:
    """A loaded diffusers pipeline and what bggen knows about it, kept beside the pipeline."""

    pipeline: Any  # StableDiffusionControlNetPipeline or ...ControlNetInpaintPipeline, on its device
    base: ModelRef
    controlnet: ModelRef
    inpaint: bool  # the ControlNet inpainting pipeline (DiffusionConfig.use_inpaint)
    device: str
    dtype: str  # "float16", "float32", ...
    speedups: tuple[str, ...]  # what load_pipeline applied: sdpa, fused-qkv, channels_last, ...
    lora: str | None = None  # lora_identity of the fused LoRA


def load_pipeline(cfg: DiffusionConfig, log: Callable[[str], None] | None = None) -> LoadedPipeline:
    """Check the configured models and device, then load the diffusers pipeline
    (``StableDiffusionControlNetPipeline``, or ``StableDiffusionControlNetInpaintPipeline`` with
    ``use_inpaint``) on the device, with the configured scheduler and speed-ups.

    Raises (all ``DiffusionConfigError``): ``DeviceUnavailableError`` for CUDA without CUDA,
    ``ModelNotFoundError`` for a missing directory or uncached hub id, ``WrongModelTypeError``
    for a directory of the wrong kind, ``ModelLoadError`` when diffusers fails anyway."""
    import torch
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetInpaintPipeline,
        StableDiffusionControlNetPipeline,
    )

    log = log or (lambda _m: None)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    base, cn = resolve_models(cfg)
    _check_controlnet_fits(cfg, base, cn)
    lora_identity(cfg)  # a LoRA path that does not exist fails before any weights load

    t0 = time.perf_counter()
    common: dict[str, Any] = {"dtype": dtype, "local_files_only": cfg.local_files_only,
                              "cache_dir": cfg.cache_dir}
    if importlib.util.find_spec("accelerate") is None:
        common["low_cpu_mem_usage"] = False  # what diffusers falls back to anyway, minus the warning
    try:
        controlnet = ControlNetModel.from_pretrained(cn.location, revision=cn.revision, **common)
    except Exception as e:
        raise ModelLoadError(f"{cn.field}={cn.name!r} failed to load: {e}") from e
    cls = StableDiffusionControlNetInpaintPipeline if cfg.use_inpaint else StableDiffusionControlNetPipeline
    extra: dict[str, Any] = {}
    if not cfg.safety_checker:
        extra.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(base.location, controlnet=controlnet, revision=base.revision,
                                   **common, **extra)
    except Exception as e:
        raise ModelLoadError(f"base_model={cfg.base_model!r} failed to load as {cls.__name__}: {e}") from e
    pipe.scheduler = make_scheduler(cfg.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if cfg.lora is not None:  # before the speed-ups: fusing changes the weights they compile
        _apply_lora(pipe, cfg)

    speedups = ["sdpa"]  # diffusers' default attention processor on torch 2 (AttnProcessor2_0)
    if cfg.lora is not None:
        speedups.append(f"lora-fused*{cfg.lora_scale:g}")
    if _auto(cfg.fuse_qkv, device):
        pipe.fuse_qkv_projections(unet=True, vae=True)
        speedups.append("fused-qkv")
    if _auto(cfg.channels_last, device):
        for m in (pipe.unet, pipe.controlnet, pipe.vae):
            m.to(memory_format=torch.channels_last)
        speedups.append("channels_last")
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    if _auto(cfg.compile, device):
        kw: dict[str, Any] = {"dynamic": cfg.compile_dynamic}
        if cfg.compile_mode:
            kw["mode"] = cfg.compile_mode
        # static graphs: one per (batch size, generation size), more than torch's default limit
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
        pipe.unet = torch.compile(pipe.unet, **kw)
        pipe.controlnet = torch.compile(pipe.controlnet, **kw)
        speedups.append("torch.compile" + (f"({cfg.compile_mode})" if cfg.compile_mode else ""))
    dtype_name = str(dtype).replace("torch.", "")
    log(
        f"diffusion: loaded {cls.__name__} base={base.identity} controlnet={cn.identity} on "
        f"{device}/{dtype_name} scheduler={cfg.scheduler} "
        f"[{', '.join(speedups)}] in {time.perf_counter() - t0:.1f}s"
    )
    return LoadedPipeline(pipe, base, cn, cfg.use_inpaint, device, dtype_name, tuple(speedups), lora_identity(cfg))
