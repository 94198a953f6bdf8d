"""Tiny random-weight models, built offline from the real diffusers/transformers classes.

They exist so that the real loading path (`save_pretrained` → `from_pretrained`) runs on a
CPU-only machine with no model hub: the demo, the tests and the benchmarks all use them.
Every component is built after `torch.manual_seed(0)`, so two builds are bit-identical.

The folders are written once into the farm cache, atomically (build in a temp folder,
then `os.replace`), and are laid out exactly like a hub checkout:

    <cache>/models/tiny-sd15-v1/        a StableDiffusionPipeline folder (model_index.json, unet/, vae/, …)
    <cache>/models/tiny-motion-adapter-v1/   a MotionAdapter folder
    <cache>/models/tiny-svd-v1/         a StableVideoDiffusionPipeline folder
    <cache>/models/tiny-controlnet-v1/  a ControlNetModel folder that fits tiny-sd15
    <cache>/models/tiny-wan-v1/         a WanPipeline folder (Wan 2.1 layout: one transformer)
    <cache>/models/tiny-wan22-v1/       a WanPipeline folder (Wan 2.2 layout: two experts, boundary_ratio)
    <cache>/models/tiny-wan-i2v-v1/     a WanImageToVideoPipeline folder (Wan 2.1 I2V layout: CLIP image encoder)
    <cache>/models/tiny-vae-v1/         an AutoencoderKL folder that fits tiny-sd15, with other weights (`model.vae`)
    <cache>/models/tiny-sd15-config-v1/ the configs of tiny-sd15, its ControlNet and motion adapter, without
                                        weights: `model.config: tiny` for single-file checkpoints
    <cache>/models/tiny-ip-adapter-v1/  an IP-Adapter for tiny-sd15 in h94/IP-Adapter's layout:
                                        models/ip-adapter_sd15.safetensors and models/image_encoder/

farm/models/tiny_files.py writes the same weights as the single files users download.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from farm.util import cache_dir

#: Bump when a tiny config changes, so stale cached builds are never reused.
TINY_VERSION = "v1"
TINY_BASE = f"tiny-sd15-{TINY_VERSION}"
TINY_MOTION_ADAPTER = f"tiny-motion-adapter-{TINY_VERSION}"
TINY_SVD = f"tiny-svd-{TINY_VERSION}"
TINY_CONTROLNET = f"tiny-controlnet-{TINY_VERSION}"
TINY_WAN = f"tiny-wan-{TINY_VERSION}"
TINY_WAN22 = f"tiny-wan22-{TINY_VERSION}"
TINY_WAN_I2V = f"tiny-wan-i2v-{TINY_VERSION}"
TINY_VAE = f"tiny-vae-{TINY_VERSION}"
TINY_CONFIG = f"tiny-sd15-config-{TINY_VERSION}"
TINY_IP_ADAPTER = f"tiny-ip-adapter-{TINY_VERSION}"
#: Where an IP-Adapter folder keeps its weights and image encoder (h94/IP-Adapter's layout).
IP_ADAPTER_SUBFOLDER = "models"
IP_ADAPTER_WEIGHTS = "ip-adapter_sd15.safetensors"

_CROSS_ATTENTION_DIM = 32
_VOCAB_SIZE = 1000


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2/CLIP byte → printable-character table (a published fact of the BPE format)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def write_tiny_tokenizer_files(folder: Path) -> None:
    """Write a byte-level CLIP vocab.json + merges.txt small enough for a 1000-token encoder."""
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    for s in symbols:
        vocab.setdefault(s + "</w>", len(vocab))
    # A handful of merges so that common letters pair up, as in a real BPE table.
    merges = ["#version: 0.2"]
    for pair in ["t h", "th e</w>", "a n", "i n", "e r", "o n", "r e", "e s"]:
        a, b = pair.split(" ")
        merged = a + b
        if merged not in vocab:
            vocab[merged] = len(vocab)
        merges.append(pair)
    assert len(vocab) < _VOCAB_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")


def _build_base(folder: Path) -> None:
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_CROSS_ATTENTION_DIM,
        norm_num_groups=2,
    )
    vae = _tiny_vae(seed=0)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            hidden_size=_CROSS_ATTENTION_DIM,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            pad_token_id=1,
            vocab_size=_VOCAB_SIZE,
        )
    )
    save_sd_pipeline(folder, unet, vae, text_encoder)


def _tiny_vae(seed: int):
    """The tiny SD1.5 VAE. Four blocks give the SD1.5 VAE's 8× downsampling, so latent
    shapes match real models."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[8, 8, 16, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        norm_num_groups=2,
        layers_per_block=1,
    )


def _build_vae(folder: Path) -> None:
    """A VAE of the tiny SD1.5's architecture with other weights (seed 1, where the base's
    own VAE is seed 0), so that `model.vae` visibly changes the frames."""
    _tiny_vae(seed=1).save_pretrained(folder, safe_serialization=True)


def _build_config(folder: Path, root: Path | None) -> None:
    """The config files of the tiny SD1.5 folder (model_index.json, every component's
    config, the tokenizer, the scheduler), and those of the tiny ControlNet (controlnet/)
    and motion adapter (motion_adapter/): the layout of farm/data/sd15/, and no weights,
    so a single file that lacks a component fails instead of borrowing the tiny one's."""
    base = tiny_model_path(TINY_BASE, root)
    for source in sorted(base.rglob("*")):
        if source.is_file() and source.suffix != ".safetensors" and source.name != ".complete":
            target = folder / source.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    for name, subfolder in ((TINY_CONTROLNET, "controlnet"), (TINY_MOTION_ADAPTER, "motion_adapter")):
        (folder / subfolder).mkdir(parents=True)
        shutil.copyfile(tiny_model_path(name, root) / "config.json", folder / subfolder / "config.json")


def _build_ip_adapter(folder: Path, root: Path | None) -> None:
    """An IP-Adapter for the tiny SD1.5 UNet, in the layout of h94/IP-Adapter (what
    `load_ip_adapter` reads): a CLIP vision tower with projection (224×224 input, patch 14,
    as the real ViT-H) under models/image_encoder/, and models/ip-adapter_sd15.safetensors
    holding the image projection (`image_proj.proj`: the CLIP embedding to 4 tokens of the
    cross-attention width, `image_proj.norm`) and one key/value projection pair per
    cross-attention layer of the AnimateDiff UNet (`ip_adapter.{1,3,5,…}.to_k_ip/to_v_ip`,
    numbered in the order diffusers reads them: the UNet's attention processors, the
    motion modules' skipped). Random weights, so a reference image visibly changes the
    frames, as a trained adapter's does."""
    import torch
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    base = tiny_model_path(TINY_BASE, root)
    unet = UNetMotionModel.from_unet2d(UNet2DConditionModel.from_pretrained(base, subfolder="unet"),
                                       MotionAdapter.from_pretrained(tiny_model_path(TINY_MOTION_ADAPTER, root)))
    widths = unet.config.block_out_channels
    tokens, cross, clip = 4, _CROSS_ATTENTION_DIM, _CROSS_ATTENTION_DIM
    torch.manual_seed(0)
    proj, norm = torch.nn.Linear(clip, tokens * cross), torch.nn.LayerNorm(cross)
    weights = {"image_proj.proj.weight": proj.weight, "image_proj.proj.bias": proj.bias,
               "image_proj.norm.weight": norm.weight, "image_proj.norm.bias": norm.bias}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        block = name.split(".")[0]
        width = (widths[-1] if block == "mid_block" else
                 list(reversed(widths))[int(name.split(".")[1])] if block == "up_blocks" else widths[int(name.split(".")[1])])
        for which in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{key_id}.{which}.weight"] = torch.nn.Linear(cross, width, bias=False).weight
        key_id += 2
    models = folder / IP_ADAPTER_SUBFOLDER
    models.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in weights.items()}, models / IP_ADAPTER_WEIGHTS)
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=clip, projection_dim=clip, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=224, patch_size=14, layer_norm_eps=1e-05)).save_pretrained(models / "image_encoder")


def save_sd_pipeline(folder: Path, unet, vae, text_encoder, dtype=None) -> None:
    """Save these models as an SD1.5-layout pipeline folder, with the tiny tokenizer and the
    DDIM scheduler settings SD1.5 ships with (optionally cast to `dtype` first)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tok_dir = folder.parent / (folder.name + "-tokfiles")
    write_tiny_tokenizer_files(tok_dir)
    tokenizer = CLIPTokenizer(
        vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"), model_max_length=77
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False, steps_offset=1
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
    if dtype is not None:
        pipe.to(dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(tok_dir, ignore_errors=True)


def _build_motion_adapter(folder: Path) -> None:
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(0)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=2,
        motion_norm_num_groups=2,
        motion_num_attention_heads=4,
        motion_max_seq_length=64,
    )
    adapter.save_pretrained(folder, safe_serialization=True)


def _build_svd(folder: Path) -> None:
    """A StableVideoDiffusionPipeline folder, laid out like stabilityai/stable-video-diffusion-img2vid-xt.

    The UNet takes the noise latents and the conditioning image's latents concatenated over
    channels (in_channels 8 = 2 × 4); its added time embedding holds (fps, motion bucket,
    noise augmentation), 3 × addition_time_embed_dim wide. The VAE has four blocks, so it
    downsamples 8× like the real one. The CLIP vision tower takes 224×224 input, the size the
    pipeline resizes the conditioning image to; its projection is the UNet's cross-attention.
    """
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=3 * 32,
        layers_per_block=1,
        cross_attention_dim=_CROSS_ATTENTION_DIM,
        num_attention_heads=(2, 4),
        num_frames=8,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=_CROSS_ATTENTION_DIM,
            projection_dim=_CROSS_ATTENTION_DIM,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=224,
            patch_size=14,
            layer_norm_eps=1e-05,
        )
    )
    feature_extractor = CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224})
    # SVD's own scheduler: EDM (Karras) sigmas from 0.002 to 700, v-prediction, continuous timesteps.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        interpolation_type="linear",
        use_karras_sigmas=True,
        sigma_min=0.002,
        sigma_max=700.0,
        timestep_spacing="leading",
        timestep_type="continuous",
        steps_offset=1,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler, feature_extractor=feature_extractor
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def _build_controlnet(folder: Path) -> None:
    """A ControlNetModel whose residuals fit the tiny SD1.5 UNet of `_build_base`.

    A new ControlNet's output convolutions start at zero (it adds nothing until trained),
    so those layers get random weights here: with them the control frames change the video,
    as a trained ControlNet's do. The conditioning embedding downsamples 8×, as the VAE does.
    """
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    controlnet = ControlNetModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        in_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        cross_attention_dim=_CROSS_ATTENTION_DIM,
        norm_num_groups=2,
        conditioning_embedding_out_channels=(16, 16, 32, 32),
    )
    torch.manual_seed(0)
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        # He init through the conditioning embedding, so that the control image still shows
        # after its seven convolutions (the default init lets it fade to nothing).
        for conv in (embedding.conv_in, *embedding.blocks, embedding.conv_out):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            torch.nn.init.zeros_(conv.bias)
        for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            torch.nn.init.normal_(conv.weight, std=0.1)
            torch.nn.init.normal_(conv.bias, std=0.1)
    controlnet.save_pretrained(folder, safe_serialization=True)


#: The words the tiny Wan tokenizer knows (any other word is `<unk>`); ids stay under the
#: tiny UMT5's vocabulary of 32.
_WAN_WORDS = ("a red fox running through snow grey wolf in forest green blurry bad quality "
              "the of and night city river sunset").split()


def _wan_components(boundary_ratio: float | None, image: bool = False):
    """The parts of a tiny WanPipeline: a 2-layer WanTransformer3DModel (two of them, the
    high- and low-noise experts, with `boundary_ratio`), the Wan VAE at base_dim 3 (time
    compressed 4×, space 8×, like the real one), a 2-layer UMT5 encoder and a word-level
    tokenizer built with the `tokenizers` library, and the flow-matching Euler scheduler.
    With `image` (Wan 2.1 image-to-video): the transformer also reads the condition (4 mask
    channels and 16 latent channels, 36 in all) and a CLIP image embedding (a tiny CLIP
    vision tower taking 224×224 input, patch 14, as the real one)."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    def transformer():
        torch.manual_seed(0)
        extra = {"in_channels": 36, "image_dim": 32, "added_kv_proj_dim": 24} if image else {"in_channels": 16}
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32, **extra)

    parts = {"transformer": transformer()}
    if boundary_ratio is not None:
        parts["transformer_2"] = transformer()
        with torch.no_grad():  # a low-noise expert that differs from the high-noise one
            for param in parts["transformer_2"].parameters():
                param.mul_(0.9)
        parts["boundary_ratio"] = boundary_ratio
    torch.manual_seed(0)
    parts["vae"] = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                    temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    parts["text_encoder"] = UMT5EncoderModel(UMT5Config(vocab_size=32, d_model=32, d_kv=8, num_heads=4, num_layers=2,
                                                      d_ff=37, relative_attention_num_buckets=8))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: 3 + i for i, w in enumerate(_WAN_WORDS)}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    parts["tokenizer"] = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>",
                                                 unk_token="<unk>", model_max_length=512)
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=5.0)
    if image:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        torch.manual_seed(0)
        parts["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=224,
            patch_size=14, projection_dim=32))
        parts["image_processor"] = CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224})
    return parts


def _build_wan(folder: Path) -> None:
    """A WanPipeline folder, laid out like Wan-AI/Wan2.1-T2V-1.3B-Diffusers."""
    from diffusers import WanPipeline

    WanPipeline(**_wan_components(None)).save_pretrained(folder, safe_serialization=True)


def _build_wan22(folder: Path) -> None:
    """A WanPipeline folder with two experts, laid out like Wan-AI/Wan2.2-T2V-A14B-Diffusers."""
    from diffusers import WanPipeline

    WanPipeline(**_wan_components(0.875)).save_pretrained(folder, safe_serialization=True)


def _build_wan_i2v(folder: Path) -> None:
    """A WanImageToVideoPipeline folder, laid out like Wan-AI/Wan2.1-I2V-14B-480P-Diffusers."""
    from diffusers import WanImageToVideoPipeline

    WanImageToVideoPipeline(**_wan_components(None, image=True)).save_pretrained(folder, safe_serialization=True)


_BUILDERS = {
    TINY_BASE: _build_base,
    TINY_MOTION_ADAPTER: _build_motion_adapter,
    TINY_SVD: _build_svd,
    TINY_CONTROLNET: _build_controlnet,
    TINY_WAN: _build_wan,
    TINY_WAN22: _build_wan22,
    TINY_WAN_I2V: _build_wan_i2v,
    TINY_VAE: _build_vae,
}
#: Builds made from other tiny models (in the same cache root).
_DERIVED = {TINY_CONFIG: _build_config, TINY_IP_ADAPTER: _build_ip_adapter}


def tiny_model_path(name: str, root: Path | None = None) -> Path:
    """Return the folder of tiny model `name`, building it on first use."""
    if name in _DERIVED:
        return build_cached(name, lambda folder: _DERIVED[name](folder, root), root)
    if name not in _BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; known: {sorted(_BUILDERS) + sorted(_DERIVED)}")
    return build_cached(name, _BUILDERS[name], root)


def build_cached(name: str, build, root: Path | None = None) -> Path:
    """`<cache>/models/<name>`, made by `build(folder)` on first use.

    Concurrent callers (several actors on one node) are safe: each builds into its own
    temp folder and the first `os.replace` wins; the others discard their copy.
    """
    models = (root or cache_dir()) / "models"
    final = models / name
    if (final / ".complete").exists():
        return final
    models.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models))
    try:
        build(tmp / "m")
        (tmp / "m" / ".complete").write_text("ok\n")
        try:
            os.replace(tmp / "m", final)
        except OSError:
            if not (final / ".complete").exists():  # a half folder from a crash: replace it
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp / "m", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
