"""Learned image-quality predictors behind 4M-21's `watermark_score` and `aesthetic_score`.

ml-4m bins both fields (4M_FORMAT.md §7: watermark at 0.5, aesthetic at 4.5 / 5.5) but
publishes neither the predictors nor how they were run. The bins fit LAION's two public
predictors, the usual choice for web-image metadata; which ones 4M-21 used is not stated in
anything we could read, so these are the LAION predictors, named as such in provenance. Both
run from weights the user supplies (never downloaded here); unconfigured, the fields are absent.

- `watermark_score`: LAION-5B-WatermarkDetection (github LAION-AI, MIT): timm
  `efficientnet_b3a` whose classifier is Linear(1536→625) → ReLU → Dropout → Linear(625→256)
  → ReLU → Linear(256→2); input the RGB image resized to 256×256 (torchvision `Resize`, PIL
  bilinear), ImageNet mean/std; score = softmax(logits)[0], the watermark probability
  (their `inference.py` writes it as `pwatermark`). Weights: `watermark_model_v1.pt`, a
  state dict (bare, or under `weights` as their inference.py reads it), or a .safetensors of it.
  prism4m feeds the ingested image (short side as ingested), not the original download.
- `aesthetic_score`: LAION improved-aesthetic-predictor (github christophschuhmann, Apache-2.0):
  an MLP Linear(D→1024) → Dropout → Linear(1024→128) → Dropout → Linear(128→64) → Dropout →
  Linear(64→16) → Linear(16→1), no activations, on the **L2-normalised** CLIP image embedding
  (`simple_inference.py`); a single Linear(D→1) head (LAION's first predictor) loads too. The
  embedding is row 0 of the committed `clip/` member (``model.encode_image``, clip.py), so the
  clip labeler must run the CLIP the head was trained on: ViT-L/14 (OpenAI, D = 768) for
  `sac+logos+ava1-l14-linearMSE.pth`. A width mismatch is an error naming both widths.

State dicts load strictly; a ``.pth``/``.pt`` is read with ``torch.load(weights_only=True)``
(tensors only, no code runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prism4m.contract.members import decode_npy
from prism4m.labelers import weights

WATERMARK_INPUT = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: LAION's aesthetic MLP: Linear indices inside its nn.Sequential (Dropouts in between)
_AESTHETIC_LINEARS = (0, 2, 4, 6, 7)


class ScoreWeightsError(ValueError):
    """The weights file is not the predictor it was given as (the message names file and keys)."""


def predictor_state_dict(path: str | Path) -> dict:
    """A predictor's state dict from a file, or a directory holding one weights file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".pt", ".pth", ".bin"))
        if len(files) != 1:
            raise ScoreWeightsError(f"{path}: expected one weights file (.safetensors/.pt/.pth), found "
                                    f"{[p.name for p in files] or 'none'}")
        path = files[0]
    if not path.exists():
        raise ScoreWeightsError(f"{path}: no such weights file")
    try:  # LAION's inference.py keeps the state dict under `weights`
        state = weights.read_state_dict(path, nested=("weights",))
    except Exception as exc:  # noqa: BLE001 - a pickle with code in it, or not a torch file at all
        raise ScoreWeightsError(f"{path}: not a tensors-only state dict ({type(exc).__name__}: "
                                f"{str(exc)[:160]})") from None
    if not isinstance(state, dict):
        raise ScoreWeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def _load_strict(module, state: dict, path) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ScoreWeightsError(f"{path}: does not fit the predictor: missing {sorted(missing)[:6]}, "
                                f"unexpected {sorted(unexpected)[:6]}")


class AestheticHead:
    """LAION's aesthetic predictor over a CLIP image embedding (see module docstring)."""

    def __init__(self, path: str | Path):
        import torch

        state = predictor_state_dict(path)
        if set(state) == {"weight", "bias"}:  # the single linear head
            self.net = torch.nn.Linear(state["weight"].shape[1], 1)
            self._forward = self.net
        else:
            first = state.get("layers.0.weight")
            if first is None:
                raise ScoreWeightsError(f"{path}: neither LAION's aesthetic MLP (layers.0.weight …) nor a linear "
                                        f"head (weight, bias); keys: {sorted(state)[:6]}")
            widths = [first.shape[1], 1024, 128, 64, 16]
            mods: list = []
            for i, (a, b) in enumerate(zip(widths, widths[1:] + [1])):
                mods.append(torch.nn.Linear(a, b))
                if i < 3:
                    mods.append(torch.nn.Dropout(0.0))  # LAION's Dropouts: identity at inference
            self.net = torch.nn.Module()  # LAION's MLP keeps its Sequential under `layers`
            self.net.layers = torch.nn.Sequential(*mods)
            self._forward = self.net.layers
        _load_strict(self.net, state, path)
        self.net.eval()
        self.input_width = int(next(iter(self.net.parameters())).shape[1])

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """(B, D) CLIP image embeddings (not normalised) → (B,) scores."""
        import torch

        x = np.asarray(embeddings, dtype=np.float64)
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        x = x / np.where(norms == 0, 1.0, norms)
        with torch.no_grad():
            t = torch.from_numpy(x.astype(np.float32))
            out = self._forward(t)
        return out[:, 0].numpy().astype(np.float64)

    def embedding(self, clip_member: bytes, folder: str = "clip") -> np.ndarray:
        """Row 0 of a clip member (the global embedding), checked against the head's width."""
        row = decode_npy(clip_member)[0].astype(np.float32)
        if row.shape[0] != self.input_width:
            raise ValueError(f"aesthetic_score: the head takes {self.input_width}-d CLIP embeddings, {folder}/ holds "
                             f"{row.shape[0]}-d ones; label {folder} with the CLIP the head was trained on "
                             "(LAION's: model_name ViT-L-14, checkpoint openai)")
        return row


class WatermarkDetector:
    """LAION's watermark detector (see module docstring)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        import timm
        import torch
        from torchvision import transforms as T

        # LAION named it efficientnet_b3a; timm ≥ 0.9 calls the same network efficientnet_b3
        model = timm.create_model("efficientnet_b3", pretrained=False, num_classes=2)
        model.classifier = torch.nn.Sequential(
            torch.nn.Linear(1536, 625), torch.nn.ReLU(), torch.nn.Dropout(0.3),
            torch.nn.Linear(625, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2))
        _load_strict(model, predictor_state_dict(path), path)
        self.model = model.eval().to(device)
        self.device = device
        self.preprocess = T.Compose([T.Resize((WATERMARK_INPUT, WATERMARK_INPUT)), T.ToTensor(),
                                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 images → (B,) watermark probabilities."""
        import torch
        from PIL import Image

        if not images:
            return np.zeros(0)
        batch = torch.stack([self.preprocess(Image.fromarray(im)) for im in images]).to(self.device)
        with torch.no_grad():
            p = torch.softmax(self.model(batch).float(), dim=1)[:, 0]
        return p.cpu().numpy().astype(np.float64)
