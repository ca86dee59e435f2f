"""4M's multimodal masking: Dirichlet token budgets, image splits, T5 span masking.

For every sample (4M_FORMAT.md §5.1):

1. pick one component of the alpha mixture (by its sampling weight);
2. split the input budget N_in over the modalities with Dir(alpha_in), the target budget
   N_tg with Dir(alpha_tg); a modality never gets more than it holds (image targets are
   capped by what the input left over);
3. image / global modalities: a random permutation of positions, the first ``b_in`` go to
   the encoder, the next ``b_tg`` become targets;
4. sequence modalities: T5-style span corruption, sentinels from ``[S_1]``; the input keeps
   tokens with a keep probability that shrinks until the input fits its budget, the target
   lists ``[S_k] span_k`` and is cut to its budget.

Unlike ml-4m, the budgets always sum exactly to the requested totals (capped by what the
sample holds): rounding is unbiased (systematic sampling of the fractional parts) and
tokens a full modality cannot take are handed to modalities with room, so the encoder and
decoder stay full. Output arrays have a fixed length per modality so samples stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from prism4m.tokenizers.text import NUM_SENTINELS, PAD_ID, SENTINEL_0_ID

from .modalities import TrainModality

KEEP_SCHEMES = ("random", "all", "binary")


@dataclass(frozen=True)
class AlphaComponent:
    """One Dirichlet setting of the mixture. Missing modalities get alpha 0."""

    input_alphas: Mapping[str, float]
    target_alphas: Mapping[str, float]
    keep: Mapping[str, str] = field(default_factory=dict)  # seq modality -> keep scheme
    weight: float = 1.0


def _rgb_like(modalities: Sequence[str]) -> str | None:
    """The modality that plays 4M's rgb input in rgb->all (we train on tokens, not pixels)."""
    for name in modalities:
        if name.split("@")[0] == "tok_rgb":
            return name
    return None


def all2all(modalities: Sequence[str], alpha: float = 0.5, weight: float = 1.0) -> AlphaComponent:
    return AlphaComponent({m: alpha for m in modalities}, {m: alpha for m in modalities}, weight=weight)


def rgb2all(modalities: Sequence[str], target_alpha: float = 0.5, weight: float = 1.0) -> AlphaComponent:
    rgb = _rgb_like(modalities)
    if rgb is None:
        raise ValueError("rgb2all needs a tok_rgb@<res> modality")
    inputs = {m: (1000.0 if m == rgb else 0.0) for m in modalities}
    return AlphaComponent(inputs, {m: target_alpha for m in modalities}, weight=weight)


def mixture_4m7(modalities: Sequence[str]) -> list[AlphaComponent]:
    """4M-7: rgb->all and all->all, alpha 0.5, used uniformly."""
    comps = [all2all(modalities, 0.5)]
    if _rgb_like(modalities):
        comps.insert(0, rgb2all(modalities, 0.5))
    return comps


def mixture_4m21(modalities: Sequence[str]) -> list[AlphaComponent]:
    """4M-21: all->all at 0.01/0.1/1/10, rgb->all, and a caption bias (T5 bias dropped:
    t5_caption embeddings are not a token modality here). Palette keeps are binary."""
    binary = {m: "binary" for m in modalities if m.split("@")[0] == "color_palette"}
    comps = [
        AlphaComponent({m: a for m in modalities}, {m: a for m in modalities}, keep=binary)
        for a in (0.01, 0.1, 1.0, 10.0)
    ]
    if _rgb_like(modalities):
        comps.append(AlphaComponent(rgb2all(modalities).input_alphas, {m: 0.5 for m in modalities}, keep=binary))
    if "caption" in modalities:
        inputs = {m: (5.0 if m == "caption" else 0.05) for m in modalities}
        targets = {m: (0.0 if m == "caption" else 0.5) for m in modalities}
        comps.append(AlphaComponent(inputs, targets, keep={**binary, "caption": "all"}, weight=0.5))
    return comps


MIXTURES = {"4m7": mixture_4m7, "4m21": mixture_4m21, "all2all": lambda mods: [all2all(mods, 0.5)]}


def sample_dirichlet(rng: np.random.Generator, alphas: np.ndarray) -> np.ndarray:
    """Dirichlet draw that stays finite for tiny alphas (4M-21 uses 0.01).

    Gamma(a) for small a underflows to 0 in float64, so draw in log space:
    Gamma(a) = Gamma(a + 1) * U**(1/a). Alpha 0 means probability 0.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    positive = alphas > 0
    log_g = np.full(alphas.shape, -np.inf)
    a = alphas[positive]
    log_g[positive] = np.log(rng.standard_gamma(a + 1.0)) + np.log(rng.random(a.shape)) / a
    log_g -= log_g[positive].max()
    p = np.exp(log_g)
    return p / p.sum()


def _round_keeping_sum(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integers with the same (integer) sum whose expectation is exactly ``values``.

    Floors, then hands out the remaining units by systematic sampling over the fractional
    parts, so unit i goes out with probability equal to its fractional part.
    """
    floors = np.floor(values)
    fractions = values - floors
    remainder = int(round(fractions.sum()))
    out = floors.astype(np.int64)
    if remainder > 0:
        edges = np.cumsum(fractions)
        points = rng.random() + np.arange(remainder)
        chosen = np.searchsorted(edges, points, side="right")
        np.add.at(out, np.minimum(chosen, len(values) - 1), 1)
    return out


def allocate_budget(
    rng: np.random.Generator, alphas: np.ndarray, total: int, caps: np.ndarray
) -> np.ndarray:
    """Split ``total`` tokens over modalities by Dir(alphas), respecting ``caps``.

    Returns ints with sum == min(total, caps.sum()) and 0 <= budget <= caps.
    """
    caps = np.asarray(caps, dtype=np.int64)
    total = int(min(total, caps.sum()))
    budget = np.zeros(len(caps), dtype=np.int64)
    if total == 0:
        return budget
    alphas = np.where(caps > 0, np.asarray(alphas, dtype=np.float64), 0.0)
    if not (alphas > 0).any():  # e.g. rgb->all on a sample without rgb tokens
        alphas = (caps > 0).astype(np.float64)
    weights = sample_dirichlet(rng, alphas)
    budget = _round_keeping_sum(weights * total, rng)
    # Hand tokens a full modality cannot take to those with room, in proportion to their
    # Dirichlet weight (uniformly once only zero-weight modalities have room).
    for _ in range(len(caps) + 1):
        excess = int(np.maximum(budget - caps, 0).sum())
        budget = np.minimum(budget, caps)
        if excess == 0:
            break
        room = caps - budget
        share = np.where(room > 0, weights, 0.0)
        if share.sum() <= 0:
            share = (room > 0).astype(np.float64)
        budget += _round_keeping_sum(share / share.sum() * excess, rng)
    return budget


def _keep_probability(rng: np.random.Generator, scheme: str) -> float:
    if scheme == "all":
        return 1.0
    if scheme == "binary":
        return float(rng.integers(0, 2))
    if scheme == "random":
        return float(rng.random())
    raise ValueError(f"unknown keep scheme {scheme!r}; expected one of {KEEP_SCHEMES}")


def _sentinel(k: int) -> int:
    # Sentinels start at [S_1]; wrap long sequences rather than running past [S_199].
    return SENTINEL_0_ID + 1 + (k % (NUM_SENTINELS - 1))


def span_mask(
    tokens: Sequence[int], input_budget: int, target_budget: int, rng: np.random.Generator, keep: str = "random"
) -> tuple[list[int], list[int]]:
    """T5-style span corruption of one token sequence.

    Returns (encoder input, decoder target). The input holds kept tokens with every masked
    run replaced by one sentinel; the target is ``[S_k] run_k`` for each run, cut to its
    budget at a span boundary (the first span may be cut inside, so short budgets still
    train something). ``len(input) <= input_budget`` and ``len(target) <= target_budget``.
    """
    tokens = list(tokens)
    n = len(tokens)
    if n == 0:
        return [], []
    if input_budget <= 0:
        keep_mask = np.zeros(n, dtype=bool)
    else:
        p = _keep_probability(rng, keep)
        for _ in range(200):
            keep_mask = rng.random(n) < p
            starts = np.count_nonzero(~keep_mask & np.concatenate(([True], keep_mask[:-1])))
            if keep_mask.sum() + starts <= input_budget:
                break
            p *= 0.9
        else:
            keep_mask = np.zeros(n, dtype=bool)
    encoder_input: list[int] = []
    spans: list[list[int]] = []
    for i, token in enumerate(tokens):
        if keep_mask[i]:
            encoder_input.append(token)
        elif i == 0 or keep_mask[i - 1]:
            spans.append([_sentinel(len(spans)), token])
            encoder_input.append(spans[-1][0])
        else:
            spans[-1].append(token)
    if input_budget <= 0:
        encoder_input = []
    target: list[int] = []
    for span in spans:
        if len(target) + len(span) <= target_budget:
            target.extend(span)
        else:
            if not target:
                target = span[:target_budget]
            break
    if len(target) < 2:  # a lone sentinel predicts nothing
        target = []
    return encoder_input, target


class UnifiedMasker:
    """Turns one sample's token ids into fixed-size encoder/decoder arrays.

    ``sample[name]`` is a 1-D int array: the token row for img/global modalities, the token
    ids (EOS included) for seq modalities. A missing name (or None) means the sample has no
    valid value for that modality; it then gets no budget.
    """

    def __init__(
        self,
        registry: Mapping[str, TrainModality],
        components: Sequence[AlphaComponent],
        num_input_tokens: int,
        num_target_tokens: int,
        min_input_tokens: int | None = None,
        min_target_tokens: int | None = None,
    ) -> None:
        if not components:
            raise ValueError("the alpha mixture needs at least one component")
        self.registry = dict(registry)
        self.names = list(self.registry)
        self.components = list(components)
        self.num_input_tokens = num_input_tokens
        self.num_target_tokens = num_target_tokens
        self.min_input_tokens = num_input_tokens if min_input_tokens is None else min_input_tokens
        self.min_target_tokens = num_target_tokens if min_target_tokens is None else min_target_tokens
        w = np.array([c.weight for c in self.components], dtype=np.float64)
        self.component_probs = w / w.sum()
        self._component_edges = np.cumsum(self.component_probs)
        self.input_alphas = np.array([[c.input_alphas.get(m, 0.0) for m in self.names] for c in self.components])
        self.target_alphas = np.array([[c.target_alphas.get(m, 0.0) for m in self.names] for c in self.components])

    def sample_budgets(
        self, rng: np.random.Generator, present: Mapping[str, int] | None = None
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """(component index, input budget, target budget), budgets ordered like ``names``.

        ``present[name]`` is how many tokens the sample holds (0 = absent); defaults to
        every modality full.
        """
        sizes = np.array(
            [self.registry[m].num_tokens if present is None else present.get(m, 0) for m in self.names],
            dtype=np.int64,
        )
        comp = min(int(np.searchsorted(self._component_edges, rng.random(), side="right")), len(self.components) - 1)
        n_in = int(rng.integers(self.min_input_tokens, self.num_input_tokens + 1))
        n_tg = int(rng.integers(self.min_target_tokens, self.num_target_tokens + 1))
        b_in = allocate_budget(rng, self.input_alphas[comp], n_in, sizes)
        is_seq = np.array([self.registry[m].is_sequence for m in self.names])
        # Image tokens used as input cannot be targets; a sequence can be both (spans).
        target_caps = np.where(is_seq, sizes, sizes - b_in)
        b_tg = allocate_budget(rng, self.target_alphas[comp], n_tg, target_caps)
        return comp, b_in, b_tg

    def __call__(self, sample: Mapping[str, np.ndarray | None], rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
        present = {}
        for name in self.names:
            value = sample.get(name)
            spec = self.registry[name]
            if value is None:
                present[name] = 0
            elif spec.is_sequence:
                present[name] = min(len(value), spec.num_tokens)
            else:
                present[name] = spec.num_tokens
        comp, b_in, b_tg = self.sample_budgets(rng, present)
        out: dict[str, dict[str, np.ndarray]] = {}
        for i, name in enumerate(self.names):
            spec = self.registry[name]
            n = spec.num_tokens
            arrays = {
                "enc_ids": np.full(n, PAD_ID, dtype=np.int64),
                "input_mask": np.zeros(n, dtype=bool),
                "dec_ids": np.full(n, PAD_ID, dtype=np.int64),
                "labels": np.full(n, PAD_ID, dtype=np.int64),
                "target_mask": np.zeros(n, dtype=bool),
            }
            value = sample.get(name)
            if value is not None and spec.is_sequence:
                keep = self.components[comp].keep.get(name, "random")
                tokens = np.asarray(value, dtype=np.int64)[:n]
                enc, tgt = span_mask(tokens.tolist(), int(b_in[i]), int(b_tg[i]), rng, keep)
                arrays["enc_ids"][: len(enc)] = enc
                arrays["input_mask"][: len(enc)] = True
                if tgt:  # teacher forcing: slot t reads tgt[t] and predicts tgt[t + 1]
                    arrays["dec_ids"][: len(tgt) - 1] = tgt[:-1]
                    arrays["labels"][: len(tgt) - 1] = tgt[1:]
                    arrays["target_mask"][: len(tgt) - 1] = True
            elif value is not None:
                ids = np.asarray(value, dtype=np.int64)
                if ids.shape != (n,):
                    raise ValueError(f"modality {name}: expected {n} tokens, got shape {ids.shape}")
                order = rng.permutation(n)
                arrays["enc_ids"] = ids
                arrays["labels"] = ids
                arrays["input_mask"][order[: b_in[i]]] = True
                arrays["target_mask"][order[b_in[i] : b_in[i] + b_tg[i]]] = True
            out[name] = arrays
        return out


def dirichlet_expectation(components: Sequence[AlphaComponent], names: Sequence[str], total: int, kind: str) -> np.ndarray:
    """Expected per-modality budget E[alpha_i / sum(alpha)] * total, mixed over components."""
    w = np.array([c.weight for c in components], dtype=np.float64)
    w /= w.sum()
    expect = np.zeros(len(names))
    for weight, comp in zip(w, components):
        alphas = comp.input_alphas if kind == "input" else comp.target_alphas
        a = np.array([alphas.get(m, 0.0) for m in names], dtype=np.float64)
        expect += weight * a / a.sum() * total
    return expect


__all__ = [
    "AlphaComponent",
    "MIXTURES",
    "UnifiedMasker",
    "all2all",
    "allocate_budget",
    "dirichlet_expectation",
    "mixture_4m21",
    "mixture_4m7",
    "rgb2all",
    "sample_dirichlet",
    "span_mask",
]
