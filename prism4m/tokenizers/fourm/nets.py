"""The encoder + quantizer networks of ml-4m's published tokenizers, written for prism4m.

Same architecture and the same state-dict names as ml-4m's ``fourm.vq.vqvae.VQ`` (the part
of ``VQVAE`` / ``DiVAE`` that ``tokenize`` runs), so a published ``model.safetensors`` loads
into ``OfficialVQ`` with ``load_state_dict(strict=True)`` once its decoder keys are set
aside. Facts from ml-4m (commit cda590f): ``fourm/vq/vqvae.py`` (``VQ.__init__``,
``prepare_input``, ``encode``), ``fourm/vq/models/vit_models.py`` (``ViTEncoder``, ``Block``,
``Attention``, ``Mlp``), ``fourm/vq/models/mlp_models.py`` (``BottleneckMLP``,
``build_mlp``), ``fourm/vq/quantizers/quantize_lucid.py`` (``VectorQuantize`` with
``CosineSimCodebook``) and ``quantize_memcodes.py`` (``Memcodes``).

Only inference is implemented (no EMA codebook updates, no losses, no decoders). The tensor
operations follow ml-4m's order and memory layouts (e.g. the encoder output is handed to the
1×1 ``quant_proj`` as a permuted, channels-last view, as ml-4m's ``rearrange`` leaves it), so
that on the same machine and batch the ids are bit-for-bit ml-4m's, not merely close.

Names (ml-4m's):

- ``cls_emb.weight`` (semantic segmentation only: class id → ``n_channels`` embedding)
- ``encoder.proj`` (Conv2d, patch×patch stride patch, or 1×1 for feature maps when
  ``patch_proj`` is false), ``encoder.pos_emb`` (1, D, N, N) fixed 2-D sin-cos at the
  training resolution, bicubically resized to the input grid at every call,
  ``encoder.blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
  ``encoder.norm_mlp`` + ``encoder.post_mlp.{fc1,fc2}`` (tanh MLP, when ``post_mlp``)
- MLP encoders: ``encoder.linear_in``, ``encoder.blocks.{i}.block.{0,2}``,
  ``encoder.layernorms.{i}``, ``encoder.linear_out``
- ``quant_proj`` (Conv2d 1×1 to ``latent_dim``)
- ``quantize._codebook.{initted,cluster_size,embed}`` (lucid cosine codebook) or
  ``quantize.{codes,to_k.weight,to_v.weight}`` (Memcodes)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: ml-4m's ViT encoder presets (``vit_models.vit_{s,b,l}_enc``): width, depth, heads
VIT_PRESETS: dict[str, tuple[int, int, int]] = {
    "vit_s_enc": (512, 8, 8),
    "vit_b_enc": (768, 12, 12),
    "vit_l_enc": (1024, 24, 16),
}


def sincos_pos_emb_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """ml-4m's fixed 2-D sin-cos embedding (MoCo-v3 style), shape (1, dim, h, w).

    Only used to build a module before weights load: published checkpoints carry their own
    ``encoder.pos_emb``, which replaces this."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    gw, gh = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                            indexing="ij")
    quarter = dim // 4
    omega = 1.0 / (temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ow = gw.flatten()[:, None] * omega[None, :]
    oh = gh.flatten()[:, None] * omega[None, :]
    emb = torch.cat([ow.sin(), ow.cos(), oh.sin(), oh.cos()], dim=1)  # (w*h, dim), w-major
    # ml-4m then reads the (w*h) axis as (h w): keep that reading
    return emb.reshape(h, w, dim).permute(2, 0, 1).unsqueeze(0).contiguous()


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: type[nn.Module]):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Image or feature map (B, C, H, W) → features (B, D, H/p, W/p) (channels-last view)."""

    def __init__(self, *, in_channels: int, patch_size: int, resolution: int, dim: int, depth: int,
                 heads: int, patch_proj: bool = True, post_mlp: bool = False, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_size = patch_size
        self.patch_proj = patch_proj
        self.dim_tokens = dim
        n = resolution // patch_size
        self.pos_emb = nn.Parameter(sincos_pos_emb_2d(n, n, dim), requires_grad=False)
        k = patch_size if patch_proj else 1
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=k, stride=k)
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp_ratio) for _ in range(depth)])
        if post_mlp:
            self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
            self.post_mlp = _Mlp(dim, int(mlp_ratio * dim), nn.Tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.patch_proj:
            p = self.patch_size
            if h % p or w % p:
                raise ValueError(f"input {h}×{w} is not divisible by the patch size {p}")
            nh, nw = h // p, w // p
        else:
            nh, nw = h, w
        x = self.proj(x)
        x = x.permute(0, 2, 3, 1).reshape(b, nh * nw, self.dim_tokens)
        pos = F.interpolate(self.pos_emb, size=(nh, nw), mode="bicubic", align_corners=False)
        x = x + pos.permute(0, 2, 3, 1).reshape(1, nh * nw, self.dim_tokens)
        x = self.blocks(x)
        if hasattr(self, "post_mlp"):
            x = x.float() + self.post_mlp(self.norm_mlp(x.float()))
        return x.reshape(b, nh, nw, self.dim_tokens).permute(0, 3, 1, 2)


class _BottleneckBlock(nn.Module):
    def __init__(self, thin: int, wide: int):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(thin, wide), nn.GELU(), nn.Linear(wide, thin))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def parse_mlp_id(model_id: str) -> tuple[str, int, int, int]:
    """ml-4m's MLP ids, e.g. ``BottleneckMLP/B_6-Wi_1024`` → (kind, blocks, width, expansion)."""
    try:
        kind, arch = model_id.split("/")
        parts = arch.split("-")
        blocks = int(parts[0].split("_")[1])
        width = int(parts[1].split("_")[1])
        expansion = int(parts[2].split("_")[1]) if len(parts) == 3 else 4
    except (ValueError, IndexError):
        raise ValueError(f"not an ml-4m MLP id: {model_id!r} (expected e.g. 'BottleneckMLP/B_6-Wi_1024')") from None
    return kind, blocks, width, expansion


class BottleneckMLP(nn.Module):
    """Point-wise residual MLP (ml-4m's global-feature and pose encoders): (B, C, h, w) → (B, W, h, w)."""

    def __init__(self, dim_in: int, n_blocks: int, width: int, expansion: int = 4):
        super().__init__()
        self.dim_out = width
        self.linear_in = nn.Linear(dim_in, width)
        self.blocks = nn.ModuleList([_BottleneckBlock(width, expansion * width) for _ in range(n_blocks)])
        self.layernorms = nn.ModuleList([nn.LayerNorm(width) for _ in range(n_blocks)])
        self.linear_out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        x = self.linear_in(x)
        for block, norm in zip(self.blocks, self.layernorms):
            x = x + block(norm(x))
        x = self.linear_out(x)
        return x.reshape(b, h, w, self.dim_out).permute(0, 3, 1, 2)


class _CosineCodebook(nn.Module):
    """The buffers of lucid's CosineSimCodebook; ``initted`` and ``cluster_size`` are training
    state, kept only so the published state dict loads strictly."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", F.normalize(torch.randn(codebook_size, dim), p=2, dim=-1))


class CosineQuantizer(nn.Module):
    """Nearest code by cosine similarity (ml-4m ``quant_type: lucid`` with ``norm_codes: true``)."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.codebook_size = codebook_size
        self._codebook = _CosineCodebook(codebook_size, dim)

    def similarities(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents → (B·h·w, K) cosine similarities to every code."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(b, h * w, d).float().reshape(-1, d)
        flat = F.normalize(flat, p=2, dim=-1)
        embed = F.normalize(self._codebook.embed, p=2, dim=-1)
        return flat @ embed.t()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        return self.similarities(z).argmax(dim=-1).reshape(b, h, w)


class MemcodesQuantizer(nn.Module):
    """ml-4m's Memcodes at inference: per head, the code whose key best matches the latent."""

    def __init__(self, dim: int, codebook_size: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"latent_dim {dim} is not divisible by num_codebooks {heads}")
        self.heads = heads
        self.codebook_size = codebook_size
        self.scale = (dim // heads) ** -0.5
        d = dim // heads
        self.codes = nn.Parameter(torch.randn(heads, codebook_size, d))
        self.to_k = _HeadLinear(heads, d)
        self.to_v = _HeadLinear(heads, d)

    def similarities(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) → (B, heads, h·w, K) logits."""
        b, d, h, w = z.shape
        x = z.permute(0, 2, 3, 1).reshape(b, h * w, d)
        q = x.reshape(b, h * w, self.heads, d // self.heads).permute(0, 2, 1, 3) * self.scale
        k = self.to_k(self.codes)
        return torch.einsum("bhid,hjd->bhij", q, k)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) → ids (B, heads, h, w) (ml-4m: (B, h, w) when there is one head)."""
        b, _, h, w = z.shape
        ids = self.similarities(z).argmax(dim=-1)
        if self.heads == 1:
            return ids.reshape(b, h, w)
        return ids.reshape(b, self.heads, h, w)


class _HeadLinear(nn.Module):
    """A per-head linear map without bias (einops ``EinMix('h n d -> h n c', weight_shape='h d c')``)."""

    def __init__(self, heads: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, dim, dim))
        nn.init.uniform_(self.weight, -1 / math.sqrt(dim), 1 / math.sqrt(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("hnd,hdc->hnc", x, self.weight)


class OfficialVQ(nn.Module):
    """Encoder + quantizer of one published ml-4m tokenizer (``fourm.vq.vqvae.VQ``).

    ``tokenize(x)`` is ml-4m's ``VQ.tokenize``: (B, H, W) ids for grid tokenizers,
    (B, heads, 1, 1) for Memcodes with several heads."""

    def __init__(self, *, n_channels: int, n_labels: int | None, encoder: nn.Module, enc_dim: int,
                 latent_dim: int, quantizer: nn.Module):
        super().__init__()
        self.cls_emb = nn.Embedding(n_labels, n_channels) if n_labels is not None else None
        self.encoder = encoder
        self.quant_proj = nn.Conv2d(enc_dim, latent_dim, 1)
        self.quantize = quantizer

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        if self.cls_emb is not None:
            x = self.cls_emb(x).permute(0, 3, 1, 2)  # (B, H, W) ids → (B, C, H, W) view
        return self.quant_proj(self.encoder(x))

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.latents(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokenize(x)
