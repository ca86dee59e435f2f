"""Surface normals (4M `normal`): a DPT network with a 3-channel head, or a geometric fallback.

Output: 8-bit RGB PNG at the rgb/ resolution; channel c = round((n_c + 1) / 2 * 255) for a unit
normal n = (x, y, z) in [-1, 1] (4M's NormalTransform maps back with v/255*2-1; on hflip it
inverts R, so R is the image-horizontal axis).

`method: network` (default) — `DPTForSurfaceNormals`: transformers' DPTForDepthEstimation
(ViT/hybrid/backbone encoder + DPT neck + its 3-conv head) whose last 1×1 conv has 3 output
channels instead of 1 and no final ReLU (normals are signed). This is the architecture of
Omnidata's DPT normal model that 4M used; a checkpoint is a `save_pretrained` directory of this
class (config = DPTConfig, weights under the same keys as DPTForDepthEstimation, with
`head.head.4` of shape 3×32×1×1). Converting Omnidata's weights to these key names is the
user's step. The prediction is upsampled (bilinear) to the rgb size, read as
`network_output: signed` (raw x,y,z, L2-normalised per pixel) or `unit_interval` (Omnidata
style [0,1] per channel, mapped by 2v-1 then normalised), and stored in the checkpoint's own
axis convention (a network trained on Omnidata data already uses 4M's).

`method: from_depth` — the geometric fallback, labelled as such in producer and provenance. It
needs the committed `depth` folder and uses no weights. Assumptions: orthographic camera; the
16-bit depth is relative, rescaled to [0, 1] with larger = farther (the depth member's
`prism4m` text chunk says if it is stored the other way), spanning `depth_scale` image widths;
the image spans the unit square along its longer side. With a Gaussian blur (`blur_sigma`) and
central differences, n ∝ (∂z/∂x, -∂z/∂y, 1) in a frame with x to the right, y up and z towards
the viewer: a fronto-parallel surface is (128, 128, 255). Whether this matches Omnidata's axis
signs exactly is [uncertain]; real normals should come from `method: network`.
"""

from __future__ import annotations

import functools
import io
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, Resources
from prism4m.contract.members import encode_png
from prism4m.labelers.hf import HFLabeler, HFLabelerConfig


@functools.cache
def _dpt_normal_class():
    """Built on first use so importing this module does not import transformers' DPT."""
    from torch import nn
    from transformers import DPTForDepthEstimation

    class DPTForSurfaceNormals(DPTForDepthEstimation):
        """DPTForDepthEstimation with a signed 3-channel output: predicted_depth is B×3×H×W."""

        def __init__(self, config):
            super().__init__(config)
            head = self.head.head
            head[4] = nn.Conv2d(head[4].in_channels, 3, kernel_size=1)
            head[5] = nn.Identity()
            self.post_init()

    DPTForSurfaceNormals.__module__ = __name__
    return DPTForSurfaceNormals


def __getattr__(name):  # module attribute DPTForSurfaceNormals, created lazily
    if name == "DPTForSurfaceNormals":
        return _dpt_normal_class()
    raise AttributeError(name)


class NormalConfig(HFLabelerConfig):
    method: Literal["network", "from_depth"] = Field(
        "network", description="network: DPT normal checkpoint; from_depth: geometric fallback from `depth`")
    network_output: Literal["signed", "unit_interval"] = Field(
        "signed", description="network's output range: raw signed vectors or [0,1] per channel (Omnidata)")
    blur_sigma: float = Field(1.0, ge=0, description="from_depth: Gaussian blur of depth before gradients")
    depth_scale: float = Field(1.0, gt=0, description="from_depth: depth range in units of the image's longer side")


def encode_normals(n: np.ndarray) -> bytes:
    """H×W×3 float vectors → unit length → 8-bit RGB PNG, (n+1)/2*255."""
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    unit = n / np.maximum(norm, 1e-8)
    unit[norm[..., 0] < 1e-8] = (0.0, 0.0, 1.0)  # undefined direction: facing the viewer
    return encode_png(np.round((unit + 1.0) * 127.5).clip(0, 255).astype(np.uint8))


def normals_from_depth(depth: np.ndarray, larger_is_farther: bool, blur_sigma: float,
                       depth_scale: float) -> np.ndarray:
    """Relative depth map → H×W×3 normals (x right, y up, z to viewer); see module docstring."""
    import cv2

    z = depth.astype(np.float64)
    span = z.max() - z.min()
    z = (z - z.min()) / span if span > 0 else np.zeros_like(z)
    if not larger_is_farther:
        z = 1.0 - z
    if blur_sigma > 0:
        z = cv2.GaussianBlur(z, (0, 0), blur_sigma)
    pixels_per_unit = max(z.shape)
    dz_dy, dz_dx = np.gradient(z * depth_scale * pixels_per_unit)
    # surface (x, y, z(x,y)) with y down, z away; the normal facing the camera, with y flipped up
    return np.stack([dz_dx, -dz_dy, np.ones_like(z)], axis=-1)


class NormalLabeler(HFLabeler):
    name = "normal"
    Config = NormalConfig
    model_class = "DPTForSurfaceNormals"  # prism4m's class, see model_class_ref
    example_checkpoint = "<a DPTForSurfaceNormals directory converted from Omnidata's DPT normal model>"
    default_resources = Resources(num_cpus=1, num_gpus=0.2, batch_size=16)
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config=None):
        super().__init__(config)
        if self.config.method == "from_depth":
            # instance attribute: only the fallback depends on the depth folder
            self.requires = ("depth",)

    def producer(self) -> dict:
        p = super().producer()
        p["method"] = "network" if self.config.method == "network" else "from_depth (geometric fallback)"
        return p

    def model_class_ref(self):
        return _dpt_normal_class()

    def setup(self) -> None:
        if self.config.method == "network":
            super().setup()

    def model_provenance(self) -> dict:
        if self.config.method == "from_depth":
            return {"random_weights": False, "method": "from_depth (geometric fallback)", "model_id": None}
        prov = super().model_provenance()
        prov["method"] = "network"
        return prov

    def label_batch(self, batch: list[LabelInput]) -> list[bytes]:
        if self.config.method == "from_depth":
            return [self._from_depth(s) for s in batch]
        return super().label_batch(batch)

    def _from_depth(self, sample: LabelInput) -> bytes:
        from PIL import Image

        from prism4m.labelers.depth import read_depth_normalisation

        if "depth" not in sample.inputs:
            raise KeyError(f"{sample.key}: no valid depth member to derive normals from")
        png = sample.inputs["depth"]
        depth = np.asarray(Image.open(io.BytesIO(png)))
        if depth.shape[:2] != sample.image.shape[:2]:
            raise ValueError(f"{sample.key}: depth {depth.shape[:2]} is not aligned with rgb {sample.image.shape[:2]}")
        meta = read_depth_normalisation(png) or {}
        n = normals_from_depth(depth, meta.get("larger", "farther") == "farther", self.config.blur_sigma,
                               self.config.depth_scale)
        return encode_normals(n)

    def predict(self, batch: list[LabelInput]) -> list[bytes]:
        import torch.nn.functional as F

        out: list[bytes | None] = [None] * len(batch)
        for idx, inputs in self.processed_groups([s.image for s in batch]):
            pred = self.model(pixel_values=inputs["pixel_values"]).predicted_depth  # B×3×h×w
            if pred.ndim != 4 or pred.shape[1] != 3:
                raise ValueError(f"normal network must output B×3×H×W, got {tuple(pred.shape)}")
            for j, i in enumerate(idx):
                h, w = batch[i].image.shape[:2]
                n = F.interpolate(pred[j:j + 1].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
                n = n.permute(1, 2, 0).cpu().numpy()
                if self.config.network_output == "unit_interval":
                    n = n * 2.0 - 1.0
                out[i] = encode_normals(n)
        return out
