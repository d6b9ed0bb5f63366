"""A tiny Stable Diffusion + ControlNet-canny pipeline with random weights, built offline.

The real pipeline's architecture in miniature (CLIP tokenizer + text model, conditional UNet,
ControlNet made from that UNet, 2-block VAE, a scheduler), saved with ``save_pretrained`` so that
it loads back exactly like downloaded weights do::

    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    cn = ControlNetModel.from_pretrained(OUT / "controlnet", local_files_only=True)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(OUT / "sd", controlnet=cn,
                                                             local_files_only=True)

It draws noise-like pictures, not backgrounds; it exists so that the whole diffusion path (config,
loading, batching, seeds, sizes, quality gates, the Dagster assets) runs in tests and demos on a
CPU without downloading anything. A 64×64 image in 20 steps takes well under a second on a CPU.

CLI: ``python -m bggen_assets.tiny_pipeline OUT_DIR`` builds it and prints the config to use it.
"""
from __future__ import annotations

import argparse
import json
import string
import sys
import tempfile
from pathlib import Path

# Tokens of the written vocabulary. The merges file holds only its version header, so BPE merges
# nothing and a word is spelled one character per token: every printable ASCII character, alone
# and word-final ("</w>"), keeps different prompts different after tokenisation.
_CHARS = string.ascii_lowercase + string.digits + string.punctuation


TEXT_GAIN = 6.0
CONTROL_STD = 1.0


def _vocab() -> dict[str, int]:
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    tokens += list(_CHARS)
    tokens += [c + "</w>" for c in _CHARS]
    return {t: i for i, t in enumerate(tokens)}


def build_tiny_pipeline(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Build the tiny pipeline under ``out_dir``: ``out_dir/sd`` (a diffusers
    ``StableDiffusionPipeline`` directory, as SD 1.5 ships) and ``out_dir/controlnet`` (a
    ``ControlNetModel`` directory). Weights are random but deterministic in ``seed``.
    Returns ``{"base_model": out_dir/"sd", "controlnet_model": out_dir/"controlnet"}``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    with tempfile.TemporaryDirectory(prefix="tiny-tokenizer-") as tmp:
        tok_dir = Path(tmp)
        (tok_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (tok_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        tokenizer = CLIPTokenizer(
            str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77
        )

    hidden = 8
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=hidden,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            vocab_size=len(vocab),
            max_position_embeddings=77,
            projection_dim=hidden,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    ).eval()
    with torch.no_grad():  # larger embeddings: sharper cross-attention on the prompt's tokens
        text_encoder.final_layer_norm.weight.mul_(TEXT_GAIN)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2,
        cross_attention_dim=hidden,
        norm_num_groups=2,
    )
    # Random init leaves the prompt a faint influence; strengthen cross-attention so that
    # different prompts give visibly different images, as with trained weights.
    with torch.no_grad():
        for name, mod in unet.named_modules():
            if name.endswith("attn2"):
                mod.to_v.weight.mul_(TEXT_GAIN)
                mod.to_out[0].weight.mul_(TEXT_GAIN)
    torch.manual_seed(seed + 2)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    # from_unet copies the UNet's weights and zero-initialises the output convolutions, which
    # would make the control edges a no-op; give them random weights so edges matter.
    with torch.no_grad():
        for m in list(controlnet.controlnet_down_blocks) + [controlnet.controlnet_mid_block]:
            torch.nn.init.normal_(m.weight, std=CONTROL_STD)
        torch.nn.init.normal_(controlnet.controlnet_cond_embedding.conv_out.weight, std=CONTROL_STD)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(4, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=64,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    paths = {"base_model": out / "sd", "controlnet_model": out / "controlnet"}
    pipe.save_pretrained(paths["base_model"], safe_serialization=True)
    controlnet.save_pretrained(paths["controlnet_model"], safe_serialization=True)
    return paths


def config_snippet(paths: dict[str, Path]) -> str:
    """How to point the pipeline (environment read by ``bggen_assets.deployment``) or Python code
    (``DiffusionConfig``) at a built tiny model."""
    base, cn = paths["base_model"].resolve(), paths["controlnet_model"].resolve()
    return (
        "# Dagster code location (bggen_assets/deployment.py reads these):\n"
        f"export BGGEN_GENERATOR=diffusion BGGEN_BASE_MODEL={base} \\\n"
        f"       BGGEN_CONTROLNET_MODEL={cn} BGGEN_LOCAL_FILES_ONLY=1\n"
        "# Python:\n"
        "from bggen_assets.core.diffusion import DiffusionConfig, DiffusionGenerator\n"
        f"gen = DiffusionGenerator(DiffusionConfig(base_model='{base}',\n"
        f"                                         controlnet_model='{cn}',\n"
        "                                         pixel_budget=64 * 64))  # tiny: keep it small\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="directory to write sd/ and controlnet/ into")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    paths = build_tiny_pipeline(args.out_dir, seed=args.seed)
    print(f"tiny pipeline written: {paths['base_model']} and {paths['controlnet_model']}")
    print("use it with:\n")
    print(config_snippet(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
