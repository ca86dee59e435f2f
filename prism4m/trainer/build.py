"""What a run builds from its config: the registry, the shards, the masker, the model, the loaders.

``Setup(cfg)`` is everything training and evaluation share; the loop (loop.py) and the
evaluation (evaluate.py) only ask it for what they need.
"""

from __future__ import annotations

from prism4m.errors import UserError

from .config import MaskingConfig, TrainConfig
from .data import TokenLoader, TokenShardDataset
from .decode import CROP_FOLDER, SampleDecoder
from .masking import MIXTURES, AlphaComponent, UnifiedMasker
from .modalities import TrainModality, build_registry, with_overrides
from .model import MODEL_SIZES, FourM
from .sequences import load_text_tokenizer, text_tokenizer_card
from .shards import discover_shards, peek_num_tokens, random_weight_folders


def _ranges(indices: list[int]) -> str:
    """0-5, 8, 10-11: shard indices, compactly."""
    parts: list[str] = []
    for i in indices:
        if parts and i == parts[-1][1] + 1:
            parts[-1][1] = i
        else:
            parts.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in parts) or "none"


def build_components(cfg: MaskingConfig, names: list[str]) -> list[AlphaComponent]:
    if cfg.components:
        return [AlphaComponent(**c) for c in cfg.components]
    return MIXTURES[cfg.mixture](names)


class Setup:
    """Everything derived from the config that both training and evaluation need."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        d = cfg.data
        tokenizer = load_text_tokenizer(d.text_tokenizer)
        overrides = {m: dict(v) for m, v in cfg.modality_overrides.items()}
        folders_guess = [overrides.get(m, {}).get("folder", m) for m in d.modalities]
        raw_poses = [m for m, f in zip(d.modalities, folders_guess) if f == "human_poses"]
        if raw_poses:  # its boxes are in pixels of an image size the label does not hold
            raise UserError(f"data.modalities: {raw_poses[0]}: the trainer reads poses from human_poses@tok (the "
                            f"labels plus the rgb size and each person's pose tokens): run `prism4m tokenizer train "
                            f"ROOT -m human_poses -o DIR` and `prism4m tokenize ROOT -t DIR`, then list human_poses@tok")
        with_crops = folders_guess + [CROP_FOLDER]
        try:
            sources = discover_shards(d.root, with_crops, d.layout)
        except ValueError:  # a root without crop_settings (e.g. global tokens only)
            sources = discover_shards(d.root, folders_guess, d.layout)
        registry = build_registry(
            d.modalities, d.root, overrides, peek_num_tokens=lambda folder: peek_num_tokens(sources, folder)
        )
        sequences = [name for name, spec in registry.items() if spec.is_sequence]
        if sequences and tokenizer is None:
            raise UserError(f"data.text_tokenizer is not set, and data.modalities has text sequences "
                            f"({', '.join(sequences)}): set it to a WordPiece tokenizer directory (its "
                            f"tokenizer.json), e.g. what `prism4m tokenizer train ROOT -m text -o DIR` writes")
        for name, spec in registry.items():  # the tokenizer fixes sequence vocabularies
            if spec.is_sequence and tokenizer is not None and "vocab_size" not in overrides.get(name, {}):
                registry[name] = with_overrides(spec, vocab_size=tokenizer.get_vocab_size())
        self.registry: dict[str, TrainModality] = registry
        eval_set = set(d.eval_shards)
        unknown = sorted(eval_set - {s.index for s in sources})
        if unknown and not d.eval_root:  # a typo would silently train without evaluating
            raise UserError(f"data.eval_shards: {unknown} not among the shards committed in every folder of "
                            f"{d.root} ({_ranges(sorted(s.index for s in sources))})")
        self.train_sources = [s for s in sources if s.index not in eval_set]
        if d.eval_root:
            self.eval_sources = discover_shards(d.eval_root, list(sources[0].urls), d.layout)
        else:
            self.eval_sources = [s for s in sources if s.index in eval_set]
        if not self.train_sources:
            raise UserError(f"no training shards left in {d.root} after holding out {sorted(eval_set)}")
        self.names = list(self.registry)
        self.components = build_components(cfg.masking, self.names)
        self.masker = self._masker(self.components)
        self.tokenizer = tokenizer

    def _masker(self, components: list[AlphaComponent]) -> UnifiedMasker:
        m = self.cfg.masking
        return UnifiedMasker(
            self.registry, components, m.num_input_tokens, m.num_target_tokens, m.min_input_tokens, m.min_target_tokens
        )

    def target_masker(self, name: str) -> UnifiedMasker:
        """The training mixture's inputs, with every target token going to ``name``."""
        return self._masker([AlphaComponent(c.input_alphas, {name: 1.0}, c.keep, c.weight) for c in self.components])

    def random_weights(self) -> list[str]:
        """What this run reads that came from random weights: folders (ledger / export), and
        the text tokenizer when its card says it was trained on random-weight labels."""
        flagged = random_weight_folders(self.train_sources + self.eval_sources)
        card = text_tokenizer_card(self.cfg.data.text_tokenizer)
        if card.get("trained_on_random_weights") or card.get("random_weights"):
            flagged.append(f"text tokenizer {self.cfg.data.text_tokenizer}")
        return flagged

    def decoder(self, random_crop: bool) -> SampleDecoder:
        return SampleDecoder(self.registry, self.tokenizer, random_crop=random_crop)

    def model(self) -> FourM:
        mc = self.cfg.model
        if mc.size not in MODEL_SIZES:
            raise ValueError(f"unknown model size {mc.size!r}; choose from {sorted(MODEL_SIZES)}")
        extra = {k: v for k, v in mc.model_dump().items() if k != "size" and v is not None}
        return FourM(self.registry, mc.size, **extra)

    def train_loader(self, rank: int, world: int) -> TokenLoader:
        d = self.cfg.data
        dataset = TokenShardDataset(
            self.train_sources, self.decoder(d.random_crop), self.masker, d.batch_size,
            seed=self.cfg.seed, shuffle_buffer=d.shuffle_buffer, repeat=True, rank=rank, world_size=world,
        )
        return TokenLoader(dataset, num_workers=d.num_workers)

    def eval_batches(self, masker: UnifiedMasker | None = None):
        """One deterministic pass over the held-out shards: crop 0, fixed masking seed."""
        d = self.cfg.data
        dataset = TokenShardDataset(
            self.eval_sources, self.decoder(False), masker or self.masker, d.batch_size,
            seed=self.cfg.seed + 7919, shuffle_buffer=0, repeat=False, shuffle_shards=False,
        )
        for i, batch in enumerate(TokenLoader(dataset, num_workers=0)):
            if d.eval_max_batches is not None and i >= d.eval_max_batches:
                return
            yield batch
