"""What VQ and MLP tokenizers share: a torch model, a modality spec, a card, safetensors I/O.

A ``NeuralTokenizer`` turns one sample's label and crop rows into an encoder batch
(``prepare``: crop → normalise, modality.cropping and modality.specs), encodes batches to
int64 ids (``encode``) and decodes ids back to the encoder's input space (``decode``). The
tokenize stage writes a sample's ids with ``member_bytes`` (``KEY.npy`` int16 ``(n_crops,
n_tokens)``; a tokenizer whose batch is not one row per crop, such as mask.MaskTokenizer,
also returns from ``prepare_sample`` what its member needs besides the ids). Architecture
hyper-parameters live in the card, weights in ``weights.safetensors``, so ``load`` rebuilds
the model from the card alone.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Any, ClassVar

import fsspec
import numpy as np
import torch
from torch import nn

from prism4m.contract.members import encode_npy
from prism4m.modality.cropping import crop_all
from prism4m.modality.specs import TokenSpec, get_spec, normalise
from prism4m.tokenizers.card import TokenizerCard, join_url, write_card

WEIGHTS_FILE = "weights.safetensors"

#: architecture presets by size name; "tiny" is for tests and the demo, "base" is ViT-B
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 64, "depth": 2, "heads": 4, "dec_dim": 64, "dec_depth": 2, "latent_dim": 16},
    "small": {"dim": 256, "depth": 6, "heads": 8, "dec_dim": 256, "dec_depth": 6, "latent_dim": 32},
    "base": {"dim": 768, "depth": 12, "heads": 12, "dec_dim": 768, "dec_depth": 12, "latent_dim": 32},
}


class NeuralTokenizer:
    type: ClassVar[str]
    model_cls: ClassVar[type[nn.Module]]
    #: extension of the token members this tokenizer writes
    member_ext: ClassVar[str] = "npy"

    def __init__(self, card: TokenizerCard, model: nn.Module, device: str = "cpu"):
        self.card = card
        self.spec: TokenSpec = get_spec(card.modality)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    # ------------------------------------------------------------------ build / IO
    @classmethod
    def create(cls, card: TokenizerCard, device: str = "cpu") -> "NeuralTokenizer":
        return cls(card, cls.model_cls(**card.architecture), device=device)

    @classmethod
    def load(cls, url: str, card: TokenizerCard, device: str = "cpu") -> "NeuralTokenizer":
        from safetensors.torch import load as st_load

        with fsspec.open(join_url(url, card.weights.get("file", WEIGHTS_FILE)), "rb") as f:
            blob = f.read()
        want = card.weights.get("sha256")
        if want and hashlib.sha256(blob).hexdigest() != want:
            raise ValueError(f"{url}: weights do not match the card's sha256 (corrupt or replaced file)")
        tok = cls.create(card, device=device)
        tok.model.load_state_dict(st_load(blob))
        return tok

    def weights_bytes(self) -> bytes:
        from safetensors.torch import save as st_save

        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return st_save(state)

    def save(self, out_dir: str) -> TokenizerCard:
        """Write weights then the card (the card names the weights' sha256)."""
        blob = self.weights_bytes()
        fs, path = fsspec.core.url_to_fs(str(out_dir))
        fs.makedirs(path, exist_ok=True)
        fs.pipe_file(posixpath.join(path, WEIGHTS_FILE), blob)
        self.card.weights = {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(blob).hexdigest()}
        write_card(out_dir, self.card)
        return self.card

    # ------------------------------------------------------------------ use
    @property
    def input_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        m = self.model
        if hasattr(m, "in_mean"):
            return m.in_mean.cpu().numpy(), m.in_std.cpu().numpy()
        return None

    def prepare(self, value: np.ndarray, rows: np.ndarray, image_hw: tuple[int, int],
                region: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """One sample's decoded label + its crop rows → normalised encoder inputs (n_crops, …).

        ``region``: for feature maps, the rgb region they cover (default: centred square)."""
        crops = crop_all(self.spec, value, rows, self.card.input_size or 0, image_hw, region)
        return normalise(self.spec, crops, self.input_stats)

    def prepare_sample(self, value: Any, rows: np.ndarray, image_hw: tuple[int, int],
                       region: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, Any]:
        """Encoder inputs plus what ``member_bytes`` needs besides the ids (nothing: one row per crop)."""
        return self.prepare(value, rows, image_hw, region), None

    def member_bytes(self, tokens: np.ndarray, layout: Any = None) -> bytes:
        """One sample's token member: int16 ``(n_crops, n_tokens)`` as ``KEY.npy``."""
        return encode_npy(np.asarray(tokens).astype(np.int16))

    def _tensor(self, batch: Any) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(batch)) if not isinstance(batch, torch.Tensor) else batch
        return t.to(self.device)

    @torch.inference_mode()
    def encode(self, batch: Any) -> np.ndarray:
        """Normalised inputs (B, …) → token ids (B, n_tokens) int64, row-major over the grid."""
        ids = self.model.encode_ids(self._tensor(batch))
        return ids.reshape(ids.shape[0], -1).cpu().numpy().astype(np.int64)

    @torch.inference_mode()
    def decode(self, ids: Any) -> np.ndarray:
        """Token ids (B, n_tokens) → reconstruction in the encoder's input space."""
        return self.model.decode_ids(self._tensor(ids).long()).cpu().numpy()

    def card_hash(self) -> str:
        return self.card.card_hash()
