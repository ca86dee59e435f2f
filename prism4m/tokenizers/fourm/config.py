"""A published ml-4m tokenizer's ``config.json`` → the architecture to build, and its family.

``config.json`` holds the keyword arguments of ml-4m's ``VQ`` / ``VQVAE`` / ``DiVAE``
constructors (``PyTorchModelHubMixin.from_pretrained`` passes it as ``config=``), possibly
with training arguments beside them. We read the encoder + quantizer ones with ml-4m's
defaults (``fourm/vq/vqvae.py::VQ.__init__``) and the fallbacks of
``fourm/vq/__init__.py::get_image_tokenizer`` (``quantizer_type`` → ``quant_type``,
``encoder_type`` → ``enc_type``, ``input_size``/``input_size_max`` → ``image_size``,
``input_size_enc`` → ``image_size_enc``). Unknown keys are ignored, as ml-4m does.

One prism4m extension, for encoders that are not ml-4m presets (the test fixtures' tiny
``vit_tiny_enc``): ``enc_dim_tokens``, ``enc_depth``, ``enc_num_heads`` (and optionally
``enc_mlp_ratio``) give the ViT's size. For ``vit_s_enc``/``vit_b_enc``/``vit_l_enc`` the
preset decides and these keys must agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prism4m.errors import UserError
from prism4m.tokenizers.fourm.families import (
    FAMILIES,
    Family,
    family_by_domain,
    family_by_name,
    family_from_name,
)
from prism4m.tokenizers.fourm.nets import (
    VIT_PRESETS,
    BottleneckMLP,
    CosineQuantizer,
    MemcodesQuantizer,
    OfficialVQ,
    ViTEncoder,
    parse_mlp_id,
)


class OfficialConfigError(UserError):
    """config.json describes something prism4m cannot build (named in the message)."""


_MISSING = object()


def _get(cfg: dict, *names: str, default: Any = _MISSING) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    if default is _MISSING:
        raise OfficialConfigError(f"config.json has none of {', '.join(names)}")
    return default


@dataclass
class OfficialConfig:
    family: Family
    n_channels: int
    n_labels: int | None
    enc_type: str
    image_size_enc: int
    patch_size: int
    patch_proj: bool
    post_mlp: bool
    quant_type: str
    codebook_size: int
    num_codebooks: int
    latent_dim: int
    norm_codes: bool
    image_size: int = 224  # training resolution (``image_size``); SAM instances: the mask side (64)
    vit: tuple[int, int, int, float] | None = None  # dim, depth, heads, mlp_ratio
    mlp: tuple[str, int, int, int] | None = None  # kind, blocks, width, expansion
    raw: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ derived facts
    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    def grid(self, input_size: int) -> int:
        """Tokens per side at ``input_size`` (1 for global tokenizers)."""
        if self.mlp is not None:
            return 1
        return input_size // self.patch_size

    def n_tokens(self, input_size: int) -> int:
        if self.mlp is not None:
            return self.num_codebooks
        return self.grid(input_size) ** 2 * (self.num_codebooks if self.num_codebooks > 1 else 1)

    @property
    def mask_size(self) -> int:
        """SAM instances: the side of the mask the encoder takes (ml-4m ``mask_size``, 64)."""
        return self.image_size

    @property
    def instance_grid(self) -> int:
        """SAM instances: tokens per side of one instance (64 // 16 = 4, i.e. 16 ids)."""
        return self.image_size // self.patch_size

    def describe(self) -> dict:
        d = {"family": self.family.name, "domain": self.family.domain, "enc_type": self.enc_type,
             "n_channels": self.n_channels, "patch_size": self.patch_size, "patch_proj": self.patch_proj,
             "post_mlp": self.post_mlp, "image_size_enc": self.image_size_enc, "quant_type": self.quant_type,
             "codebook_size": self.codebook_size, "num_codebooks": self.num_codebooks,
             "latent_dim": self.latent_dim, "norm_codes": self.norm_codes}
        if self.n_labels is not None:
            d["n_labels"] = self.n_labels
        if self.vit is not None:
            d["vit"] = {"dim": self.vit[0], "depth": self.vit[1], "heads": self.vit[2], "mlp_ratio": self.vit[3]}
        return d

    # ------------------------------------------------------------------ build
    def build(self) -> OfficialVQ:
        """The encoder + quantizer module, randomly initialised (weights load separately)."""
        if self.mlp is not None:
            kind, blocks, width, expansion = self.mlp
            encoder = BottleneckMLP(self.n_channels, blocks, width, expansion)
            enc_dim = width
        else:
            dim, depth, heads, ratio = self.vit
            encoder = ViTEncoder(in_channels=self.n_channels, patch_size=self.patch_size,
                                 resolution=self.image_size_enc, dim=dim, depth=depth, heads=heads,
                                 patch_proj=self.patch_proj, post_mlp=self.post_mlp, mlp_ratio=ratio)
            enc_dim = dim
        if self.quant_type == "lucid":
            quantizer = CosineQuantizer(self.codebook_size, self.latent_dim)
        else:
            quantizer = MemcodesQuantizer(self.latent_dim, self.codebook_size, self.num_codebooks)
        return OfficialVQ(n_channels=self.n_channels, n_labels=self.n_labels, encoder=encoder, enc_dim=enc_dim,
                          latent_dim=self.latent_dim, quantizer=quantizer)


def _as_int(cfg: dict, value: Any, what: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OfficialConfigError(f"config.json: {what} = {value!r} is not an integer")
    return value


def detect_family(cfg: dict, source: str = "", hint: str | None = None) -> Family:
    """Which published tokenizer this is: ``hint`` (a family name, domain or id), else the
    config's ``domain``, else a ``4M_tokenizers_…`` id in ``source`` (directory or hub id),
    else the architecture when it is unambiguous."""
    if hint:
        try:
            return family_by_name(hint)
        except KeyError as e:
            raise OfficialConfigError(str(e.args[0])) from None
    fam = family_by_domain(cfg.get("domain"))
    if fam:
        return fam
    fam = family_from_name(source)
    if fam:
        return fam
    n_ch = cfg.get("n_channels")
    enc = str(_get(cfg, "enc_type", "encoder_type", default="vit_b_enc"))
    if cfg.get("n_labels") is not None:
        return FAMILIES["semseg"]
    if "MLP" in enc:
        by_ch = {207: "human_poses", 768: "dinov2_global", 1280: "imagebind_global"}
        if n_ch in by_ch:
            return FAMILIES[by_ch[n_ch]]
    elif cfg.get("patch_proj") is False:
        by_ch = {512: "clip", 768: "dinov2", 1280: "imagebind"}
        if n_ch in by_ch:
            return FAMILIES[by_ch[n_ch]]
    elif n_ch == 1 and _get(cfg, "image_size", "input_size", "input_size_max", default=None) == 64:
        return FAMILIES["sam_instance"]
    candidates = {3: "rgb or normal", 1: "depth or edge"}.get(n_ch, "unknown")
    raise OfficialConfigError(
        f"cannot tell which ml-4m tokenizer {source or 'this'} is ({candidates}: config.json has no 'domain' and "
        f"the path names no 4M_tokenizers_… id); name it, e.g. 'rgb={source or 'DIR'}' "
        f"(known: {', '.join(FAMILIES)})")


def parse_config(cfg: dict, source: str = "", hint: str | None = None) -> OfficialConfig:
    if not isinstance(cfg, dict):
        raise OfficialConfigError("config.json is not a JSON object")
    family = detect_family(cfg, source, hint)
    enc_type = str(_get(cfg, "enc_type", "encoder_type", default="vit_b_enc"))
    quant_type = str(_get(cfg, "quant_type", "quantizer_type", default="lucid"))
    image_size = _as_int(cfg, _get(cfg, "image_size", "input_size", "input_size_max", default=224), "image_size")
    image_size_enc = _as_int(cfg, _get(cfg, "image_size_enc", "input_size_enc", default=image_size),
                             "image_size_enc")
    codebook_size = _get(cfg, "codebook_size", default=16384)
    if isinstance(codebook_size, str) and not codebook_size.isdigit():
        raise OfficialConfigError(f"config.json: codebook_size {codebook_size!r} (a factorised codebook) "
                                  "is not used by any published tokenizer and is not supported")
    n_labels = cfg.get("n_labels")
    out = OfficialConfig(
        family=family,
        n_channels=_as_int(cfg, _get(cfg, "n_channels", default=3), "n_channels"),
        n_labels=None if n_labels is None else _as_int(cfg, n_labels, "n_labels"),
        enc_type=enc_type,
        image_size_enc=image_size_enc,
        patch_size=_as_int(cfg, _get(cfg, "patch_size", default=16), "patch_size"),
        patch_proj=bool(_get(cfg, "patch_proj", default=True)),
        post_mlp=bool(_get(cfg, "post_mlp", default=False)),
        quant_type=quant_type,
        codebook_size=_as_int(cfg, codebook_size, "codebook_size"),
        num_codebooks=_as_int(cfg, _get(cfg, "num_codebooks", default=1), "num_codebooks"),
        latent_dim=_as_int(cfg, _get(cfg, "latent_dim", default=32), "latent_dim"),
        norm_codes=bool(_get(cfg, "norm_codes", default=True)),
        image_size=image_size,
        raw=dict(cfg),
    )
    if "vit" in enc_type:
        preset = VIT_PRESETS.get(enc_type)
        given = tuple(cfg.get(k) for k in ("enc_dim_tokens", "enc_depth", "enc_num_heads"))
        if preset is None:
            if any(v is None for v in given):
                raise OfficialConfigError(
                    f"config.json: enc_type {enc_type!r} is not an ml-4m preset ({', '.join(VIT_PRESETS)}); "
                    "give its size as enc_dim_tokens, enc_depth and enc_num_heads")
            dims = tuple(_as_int(cfg, v, k) for v, k in zip(given, ("enc_dim_tokens", "enc_depth", "enc_num_heads")))
        else:
            dims = preset
            if any(v is not None and v != p for v, p in zip(given, preset)):
                raise OfficialConfigError(f"config.json: enc_dim_tokens/enc_depth/enc_num_heads {given} "
                                          f"contradict the {enc_type} preset {preset}")
        out.vit = (*dims, float(cfg.get("enc_mlp_ratio", 4.0)))
    elif "MLP" in enc_type:
        kind, blocks, width, expansion = parse_mlp_id(enc_type)
        if kind != "BottleneckMLP":
            raise OfficialConfigError(f"config.json: enc_type {enc_type!r}: only BottleneckMLP encoders are used by "
                                      "published tokenizers and supported")
        out.mlp = (kind, blocks, width, expansion)
    else:
        raise OfficialConfigError(f"config.json: enc_type {enc_type!r} is neither an ml-4m ViT nor an MLP encoder")
    if family.kind == "sam_mask" and (out.vit is None or not out.patch_proj or out.n_channels != 1
                                      or image_size % out.patch_size):
        raise OfficialConfigError(
            f"config.json: a SAM-instance tokenizer takes one-channel {image_size}x{image_size} masks through a "
            f"patch-projecting ViT (ml-4m's sam_mask VQVAE); this one has n_channels {out.n_channels}, "
            f"patch_proj {out.patch_proj}, enc_type {enc_type!r}, patch_size {out.patch_size}")
    if quant_type == "lucid":
        if not out.norm_codes:
            raise OfficialConfigError("config.json: norm_codes false (a Euclidean codebook) is not used by any "
                                      "published tokenizer and is not supported")
        if out.num_codebooks != 1:
            raise OfficialConfigError("config.json: a lucid quantizer with num_codebooks > 1 is not supported")
    elif quant_type != "memcodes":
        raise OfficialConfigError(f"config.json: quant_type {quant_type!r} is not 'lucid' or 'memcodes'")
    return out
