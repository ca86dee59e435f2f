"""Load a published ml-4m tokenizer (``config.json`` + ``model.safetensors``) and tokenize with it.

Where from: a directory (local path or fsspec URL) holding the two files as the hub
publishes them, or a hub id (``EPFL-VILAB/4M_tokenizers_rgb_16k_224-448``) when the
machine is online and ``HF_HUB_OFFLINE`` is unset (``huggingface_hub.hf_hub_download``).
Only safetensors are read — never a pickle (``.pth`` / ``.bin``).

Which weights: only the encoder and the quantizer tokenize. Published files also hold the
decoder (``decoder.*``; ``post_quant_proj.*`` for VQVAE) — a diffusion UNet for the DiVAE
tokenizers (rgb, depth, normal, edge) — which is set aside unread. Every other key must
match ``nets.OfficialVQ`` exactly: ``load_state_dict(strict=True)``, and a mismatch is an
error naming the missing, unexpected and wrongly shaped keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass, field

import fsspec
import numpy as np
import torch

from prism4m.errors import UserError
from prism4m.tokenizers.fourm import preprocess as pp
from prism4m.tokenizers.fourm.config import OfficialConfig, parse_config
from prism4m.tokenizers.fourm.families import Family
from prism4m.tokenizers.fourm.nets import OfficialVQ

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: state-dict prefixes of the decoders (never needed to tokenize)
DECODER_PREFIXES = ("decoder.", "post_quant_proj.")
_PICKLE_FILES = ("pytorch_model.bin", "model.pth", "model.pt", "checkpoint.pth")


class OfficialLoadError(UserError):
    """The files are not a loadable published tokenizer (the message says which key/file)."""


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name if "://" in base else posixpath.join(base, name)


def _exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def is_official_dir(path_or_url: str) -> bool:
    """A directory holding ``config.json`` + ``model.safetensors`` and no prism4m card."""
    base = str(path_or_url)
    try:
        return (_exists(_join(base, CONFIG_FILE)) and _exists(_join(base, WEIGHTS_FILE))
                and not _exists(_join(base, "card.json")))
    except (OSError, ValueError):
        return False


def looks_like_hub_id(text: str) -> bool:
    parts = str(text).split("/")
    return (len(parts) == 2 and all(parts) and "://" not in text and not os.path.exists(text)
            and not text.startswith((".", "~")))


def _hub_files(repo_id: str) -> tuple[str, str]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise OfficialLoadError(f"{repo_id}: HF_HUB_OFFLINE is set; download the tokenizer once "
                                f"(config.json and model.safetensors) and pass its directory")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise OfficialLoadError("loading from the hub needs huggingface_hub") from None
    try:
        cfg = hf_hub_download(repo_id, CONFIG_FILE)
        weights = hf_hub_download(repo_id, WEIGHTS_FILE)
    except Exception as e:  # network, unknown repo, missing file: all the user's to fix
        raise OfficialLoadError(f"{repo_id}: could not download {CONFIG_FILE}/{WEIGHTS_FILE} from the hub "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return os.path.dirname(cfg), weights


def split_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(encoder + quantizer keys, decoder keys set aside)."""
    keep = {k: v for k, v in state.items() if not k.startswith(DECODER_PREFIXES)}
    return keep, sorted(k for k in state if k.startswith(DECODER_PREFIXES))


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    """``load_state_dict(strict=True)``, with an error that names every mismatching key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
                    for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:8]) + (f" … ({len(xs)} in all)" if len(xs) > 8 else "")
        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"wrong shapes: {few(shapes)}" if shapes else ""]
        raise OfficialLoadError(f"{source or 'state dict'}: does not match the ml-4m architecture its "
                                f"config.json describes — " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


@dataclass
class OfficialTokenizer:
    """A published ml-4m tokenizer's encoder + quantizer with ml-4m's preprocessing."""

    config: OfficialConfig
    model: OfficialVQ
    source: str
    weights_sha256: str
    decoder_keys_skipped: list[str] = field(default_factory=list)
    depth_resample: pp.Resample = "pil_default"

    @property
    def family(self) -> Family:
        return self.config.family

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str) -> "OfficialTokenizer":
        self.model.to(device)
        return self

    def check_supported(self) -> None:
        if not self.family.supported:
            raise OfficialLoadError(f"{self.family.short_id}: {self.family.refusal}")

    # ------------------------------------------------------------------ inputs
    def inputs(self, label, rows=None, input_size: int = 224, grid: int | None = None) -> torch.Tensor:
        """One sample's label (and crop rows, for pixel modalities) → ml-4m's encoder batch.

        rgb / depth / normal / edge / semseg: ``label`` is the decoded image, ``rows`` its
        crop_settings. sam_mask: ``label`` is an ``InstanceLabel`` (cut per row by
        ``instance_masks``) or the instances' 0/1 masks ``(N, 1, 64, 64)``. feature_map: ``label`` holds patch tokens ``(h·w, C)`` or ``(B, h·w, C)``
        (``grid`` = h when not square-inferable). feature_global: ``(C,)`` or ``(B, C)``."""
        kind = self.family.kind
        if kind == "rgb":
            return pp.rgb_inputs(label, rows, input_size)
        if kind == "depth":
            return pp.depth_inputs(label, rows, input_size, self.depth_resample)
        if kind == "normal":
            return pp.normal_inputs(label, rows, input_size)
        if kind == "edge":
            return pp.edge_inputs(label, rows, input_size, self.config.n_channels)
        if kind == "semseg":
            return pp.semseg_inputs(label, rows, input_size)
        if kind == "feature_map":
            n = np.asarray(label).shape[-2]
            g = grid or int(round(n ** 0.5))
            return pp.feature_map_inputs(label, g)
        if kind == "feature_global":
            return pp.feature_global_inputs(label)
        if kind == "sam_mask":
            return pp.sam_mask_inputs(self.instance_masks(label, rows, input_size), self.config.mask_size)
        self.check_supported()
        raise OfficialLoadError(f"{self.family.short_id}: no input preparation for kind {kind!r}")

    def crop_instances(self, label, rows, input_size: int = 224):
        """SAM instances: every instance of ``label`` in every crop row, cut as prism4m's own
        mask tokenizers cut them (``modality.instances.crop_instances``) at this tokenizer's
        mask size: per kept instance its crop-pixel box and a 0/1 mask."""
        from prism4m.modality.instances import MIN_AREA, crop_instances

        return crop_instances(label, rows, input_size, self.config.mask_size, MIN_AREA)

    def instance_masks(self, label, rows=None, input_size: int = 224) -> np.ndarray:
        from prism4m.modality.instances import InstanceLabel

        if isinstance(label, InstanceLabel):
            return self.crop_instances(label, rows, input_size).masks
        return np.asarray(label)

    # ------------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> np.ndarray:
        """Encoder batch → ids (B, n_tokens) int64, flattened as save_vq_tokens.py does
        (``b h w -> b (h w)``; global tokenizers' (B, heads, 1, 1) → (B, heads))."""
        ids = self.model.tokenize(x.to(self.device))
        if ids.shape[-1] == 1:
            ids = ids.squeeze(2)
        return ids.reshape(ids.shape[0], -1).cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def margins(self, x: torch.Tensor) -> np.ndarray:
        """Per token, best minus second-best similarity (ties: ~0), shaped like ``encode``'s ids."""
        z = self.model.latents(x.to(self.device))
        sims = self.model.quantize.similarities(z)
        top2 = sims.topk(2, dim=-1).values
        gap = (top2[..., 0] - top2[..., 1]).float()
        return gap.reshape(z.shape[0], -1).cpu().numpy()

    def tokenize(self, label, rows=None, input_size: int = 224) -> np.ndarray:
        """One sample → its token member content: int16 (n_crops, n_tokens)."""
        return self.encode(self.inputs(label, rows, input_size)).astype(np.int16)

    def describe(self) -> dict:
        return {"id": self.family.hub_id, "source": self.source, "weights_sha256": self.weights_sha256,
                "config": self.config.describe(), "decoder_keys_skipped": len(self.decoder_keys_skipped)}


def locate_official_files(source: str) -> tuple[dict, str, str]:
    """(config dict, URL of the safetensors file, where they came from) for a directory or a
    hub id (downloaded into the HF cache)."""
    src = str(source)
    if not is_official_dir(src) and looks_like_hub_id(src):
        cfg_dir, weights_path = _hub_files(src)
        cfg_url, weights_url = _join(cfg_dir, CONFIG_FILE), weights_path
    else:
        cfg_url, weights_url = _join(src, CONFIG_FILE), _join(src, WEIGHTS_FILE)
        if not _exists(cfg_url) or not _exists(weights_url):
            pickles = [p for p in _PICKLE_FILES if _exists(_join(src, p))]
            hint = (f" (found {', '.join(pickles)}: prism4m reads safetensors only, never pickles)"
                    if pickles else "")
            raise OfficialLoadError(f"{src}: needs {CONFIG_FILE} and {WEIGHTS_FILE} as ml-4m publishes them{hint}")
    with fsspec.open(cfg_url, "r") as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise OfficialLoadError(f"{cfg_url}: not valid JSON ({e})") from None
    return cfg, weights_url, src


def read_official_files(source: str) -> tuple[dict, bytes, str]:
    """(config dict, safetensors bytes, where they came from) for a directory or a hub id."""
    cfg, weights_url, src = locate_official_files(source)
    with fsspec.open(weights_url, "rb") as f:
        return cfg, f.read(), src


def weights_sha256(weights_url: str) -> str:
    """sha256 of a weights file, read in blocks: a published DiVAE file with its decoder is
    hundreds of MB, and the card needs only its hash."""
    h = hashlib.sha256()
    with fsspec.open(weights_url, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def load_official(source: str, *, family: str | None = None, device: str = "cpu",
                  depth_resample: pp.Resample = "pil_default") -> OfficialTokenizer:
    """The published tokenizer in ``source`` (directory or hub id), in eval mode.

    ``family``: name it when neither config.json's ``domain`` nor the path tells (e.g. an
    rgb vs a normal tokenizer in a directory with another name)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    cfg, blob, src = read_official_files(source)
    config = parse_config(cfg, source=src, hint=family)
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError) as e:
        raise OfficialLoadError(f"{_join(src, WEIGHTS_FILE)}: not a readable safetensors file ({e})") from None
    keep, skipped = split_state_dict(state)
    model = config.build()
    load_strict(model, keep, _join(src, WEIGHTS_FILE))
    model.eval()
    tok = OfficialTokenizer(config=config, model=model, source=src,
                            weights_sha256=hashlib.sha256(blob).hexdigest(),
                            decoder_keys_skipped=skipped, depth_resample=depth_resample)
    return tok.to(device)
