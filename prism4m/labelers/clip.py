"""CLIP image features (4M-21 `clip`, tokenized later as `tok_clip@224`) with open_clip.

Output member ``KEY.npy``: float16, ``allow_pickle=False``, shape ``(1 + h·w, C)``:

- row 0: the global image embedding — the pooled token after the visual projection, exactly
  ``model.encode_image(x)`` (not L2-normalised; normalise yourself for cosine similarity);
- rows 1…h·w: the patch tokens after the final LayerNorm and the same visual projection, in
  row-major order (row ``1 + i·w + j`` is patch row i, column j). They have the global
  embedding's width C (512 for ViT-B/16), which is what 4M's CLIP-B16 feature tokenizer
  consumes; ``arr[1:].reshape(h, w, C)`` gives the map. h = w = input size / patch size
  (14×14 for ViT-B/16 at 224).

Which pixels: CLIP features are bound to the model's input resolution, so the labeler does not
store a whole-image map. With the default ``fit: center_crop`` the model sees the centred
square of the rgb image (side ``m = min(H, W)``, ``top = (H - m) // 2``,
``left = (W - m) // 2`` — crop_settings row 0) resized to the input size; patch (i, j) covers
rgb rows ``top + i·m/h … top + (i+1)·m/h`` and the matching columns. ``fit: resize`` stretches
the whole image instead (see prism4m.labelers.torch_batching). ``image_size`` runs the model at
another resolution (open_clip interpolates the position embedding), e.g. 448 for
``tok_clip@448``.

Weights — ``checkpoint`` takes what open_clip's ``pretrained=`` takes, resolved so that nothing
is fetched after setup:
- a local weights file (.safetensors/.bin/.pt/.pth): architecture from ``model_name``, or from
  an ``open_clip_config.json`` next to the file (open_clip's ``local-dir`` layout);
- a local directory holding one weights file (and optionally ``open_clip_config.json``);
- an open_clip pretrained tag for ``model_name`` (``openai``, ``laion2b_s34b_b88k``…): taken
  from the Hugging Face cache, downloaded when the hub is reachable; offline and uncached →
  MissingWeightsError;
- a hub repo id (``timm/vit_base_patch16_clip_224.openai``, ``hf-hub:`` prefix optional),
  resolved like every other labeler's hub id (``HF_HUB_OFFLINE`` honoured).
Only the image tower is kept in memory.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, Labeler, Resources
from prism4m.contract.members import encode_npy
from prism4m.labelers.torch_batching import images_to_batch
from prism4m.labelers.weights import (
    WEIGHT_SUFFIXES,
    DeepLabelerConfig,
    ResolvedCheckpoint,
    missing_weights,
    resolve_checkpoint,
)

EXAMPLE_CHECKPOINT = "timm/vit_base_patch16_clip_224.openai"
OPEN_CLIP_CONFIG = "open_clip_config.json"
LIBRARIES = ("open-clip-torch", "torch")


class ClipConfig(DeepLabelerConfig):
    model_name: str = Field("ViT-B-16", description="open_clip architecture (ignored when the checkpoint "
                                                    "directory has open_clip_config.json)")
    image_size: int | None = Field(None, ge=16, description="model input size (default: the model's own)")
    fit: Literal["center_crop", "resize"] = Field("center_crop", description="how the rgb image becomes square")
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32", description="compute dtype (fp16/bf16 only make sense on GPU); output is float16 anyway")
    cache_dir: str | None = Field(None, description="cache for pretrained tags (default: the HF cache)")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Cheap connectivity probe, so an unreachable hub fails in seconds rather than after
    huggingface_hub's minute of retries. Behind a proxy we cannot tell, so we try."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _tag_weights(model_name: str, tag: str, cache_dir: str | None, labeler: str = "clip",
                 example: str = EXAMPLE_CHECKPOINT) -> Path:
    """Local file of an open_clip pretrained tag: cache first, then the network if reachable."""
    import open_clip
    from huggingface_hub import hf_hub_download

    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, fname = posixpath.split(hub)  # open_clip's convention: "org/repo/" or "org/repo/file"
        names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        attempts = [True] if _hub_offline() or not _reachable(endpoint) else [True, False]
        for local_only in attempts:
            for name in names:
                try:
                    return Path(hf_hub_download(repo, name, cache_dir=cache_dir, local_files_only=local_only))
                except Exception:  # noqa: BLE001 - not cached / not on the hub: try the next
                    continue
        why = "offline (HF_HUB_OFFLINE)" if _hub_offline() else "not cached and the hub is unreachable"
        raise missing_weights(labeler, example, f"open_clip tag {tag!r} for {model_name}: {why}")
    url = cfg.get("url", "")
    cached = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    if cached.exists():
        return cached
    if _hub_offline() or not _reachable(url):
        raise missing_weights(labeler, example, f"open_clip tag {tag!r} for {model_name}: "
                              f"{url} is not cached and cannot be reached")
    return Path(open_clip.download_pretrained(cfg, cache_dir=cache_dir))


class _QuietRandomInit(logging.Filter):
    """open_clip logs "initialized randomly" for the architecture we build before loading the
    weights ourselves; that line would mislead anyone reading a real run's logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "initialized randomly" not in msg and "no CLIP weights found" not in msg


def _weights_file(resolved: ResolvedCheckpoint, labeler: str = "clip", example: str = EXAMPLE_CHECKPOINT) -> Path:
    if resolved.path.is_file():
        return resolved.path
    files = sorted(p for p in resolved.path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if len(files) != 1:
        # A hub snapshot may carry both formats of the same weights: prefer safetensors.
        safe = [p for p in files if p.suffix == ".safetensors"]
        if len(safe) == 1:
            return safe[0]
        raise missing_weights(labeler, example, f"{resolved.path} holds "
                              f"{len(files)} weight files ({', '.join(p.name for p in files) or 'none'}); "
                              f"point `checkpoint` at one")
    return files[0]


class OpenClipVisionLabeler(Labeler):
    """What the clip and imagebind labelers share: `checkpoint` resolved as open_clip's
    ``pretrained=`` is (tag, hub id, local file or directory), an open_clip image tower loaded
    strictly, and rgb images batched for it. Subclasses set `name`, `example_checkpoint`,
    a Config with ClipConfig's fields, and compute their rows in `features`."""

    example_checkpoint = EXAMPLE_CHECKPOINT
    visual = None
    checkpoint: ResolvedCheckpoint | None = None

    def _resolve(self) -> ResolvedCheckpoint:
        import open_clip

        ckpt, cfg = self.config.checkpoint, self.config
        if ckpt and not Path(os.path.expanduser(ckpt)).exists() and open_clip.get_pretrained_cfg(cfg.model_name, ckpt):
            return ResolvedCheckpoint(ckpt, _tag_weights(cfg.model_name, ckpt, cfg.cache_dir, self.name,
                                                         self.example_checkpoint), False)
        if ckpt and ckpt.startswith("hf-hub:"):
            ckpt = ckpt[len("hf-hub:"):]
        resolved = resolve_checkpoint(self.name, ckpt, self.example_checkpoint)
        return ResolvedCheckpoint(self.config.checkpoint, resolved.path, resolved.random_weights)

    def _weights(self) -> Path:
        """Resolve `checkpoint` (sets self.checkpoint) and return its one weights file."""
        self.checkpoint = self._resolve()
        return _weights_file(self.checkpoint, self.name, self.example_checkpoint)

    def _open_clip_visual(self, weights: Path):
        """The image tower of an open_clip checkpoint, loaded strictly; architecture from
        `open_clip_config.json` next to the weights, else from `model_name`."""
        import open_clip

        cfg = self.config
        arch_dir = weights.parent if (weights.parent / OPEN_CLIP_CONFIG).is_file() else None
        # A tag fixes the normalisation and activation its weights were trained with
        # (SigLIP's mean/std differ from OpenAI's; OpenAI weights need QuickGELU).
        tag_cfg = {} if arch_dir else open_clip.get_pretrained_cfg(cfg.model_name, cfg.checkpoint or "")
        quiet = _QuietRandomInit()
        logging.getLogger().addFilter(quiet)
        try:
            model = open_clip.create_model(
                f"local-dir:{arch_dir}" if arch_dir else cfg.model_name, pretrained=None,
                load_weights=False, force_image_size=cfg.image_size,
                force_preprocess_cfg={k: tag_cfg[k] for k in ("mean", "std") if k in tag_cfg},
                force_quick_gelu=bool(tag_cfg.get("quick_gelu")))
        finally:
            logging.getLogger().removeFilter(quiet)
        open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True)
        visual = model.visual
        if not isinstance(visual, open_clip.transformer.VisionTransformer) or visual.attn_pool is not None:
            raise ValueError(f"{self.name} labeler needs an open_clip VisionTransformer image tower without "
                             f"attention pooling (patch tokens + projection); got {type(visual).__name__}")
        del model  # the text tower is never used
        arch = {"model_name": None if arch_dir else cfg.model_name,
                "open_clip_config": json.loads((arch_dir / OPEN_CLIP_CONFIG).read_text()) if arch_dir else None}
        return visual, arch

    def _install(self, visual, arch: dict) -> None:
        """Put the tower on the device in the configured precision; record its geometry."""
        import open_clip
        import torch

        visual.output_tokens = True  # forward returns (pooled, tokens)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.config.precision]
        self.visual = visual.to(self.device, self.dtype).eval()
        pp = open_clip.get_model_preprocess_cfg(self.visual)
        self.input_size = tuple(self.visual.image_size)
        self.mean, self.std = tuple(pp["mean"]), tuple(pp["std"])
        self.arch = {**arch, "input_size": list(self.input_size), "grid": list(self.visual.grid_size)}

    def model_provenance(self) -> dict:
        self.ensure_setup()
        prov = self.checkpoint.provenance(*LIBRARIES)
        prov.update(self.arch)
        return prov

    def _batch(self, images: list[np.ndarray]):
        x, _ = images_to_batch(images, self.input_size, self.mean, self.std, fit=self.config.fit,
                               device=self.device, dtype=self.dtype)
        return x

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        feats = self.features([s.image for s in batch])
        return [encode_npy(f.astype(np.float16)) for f in feats]


class ClipLabeler(OpenClipVisionLabeler):
    name = "clip"
    Config = ClipConfig
    # ViT-B/16 at 224 is ~17 GFLOPs per image: a quarter GPU keeps up with decoding.
    default_resources = Resources(num_cpus=1, num_gpus=0.25, batch_size=64)

    def setup(self) -> None:
        visual, arch = self._open_clip_visual(self._weights())
        self._install(visual, {**arch, "embed_dim": int(visual.output_dim)})

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        """(B, 1 + h·w, C) float32: global embedding then projected patch tokens."""
        import torch

        self.ensure_setup()
        x = self._batch(images)
        with torch.inference_mode():
            pooled, tokens = self.visual(x)
            if self.visual.final_ln_after_pool:  # then only the pooled token went through ln_post
                tokens = self.visual.ln_post(tokens)
            tokens = tokens @ self.visual.proj
            out = torch.cat([pooled[:, None], tokens], dim=1)
        return out.float().cpu().numpy()
