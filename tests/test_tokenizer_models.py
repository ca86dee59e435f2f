"""VQ / MLP tokenizers: shapes, save/load through the card, codebook updates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prism4m.modality.specs import get_spec
from prism4m.tokenizers.base import SIZES
from prism4m.tokenizers.card import TokenizerCard
from prism4m.modality.token_stats import codebook_usage
from prism4m.tokenizers.mlp import MLPTokenizer, mlp_architecture
from prism4m.tokenizers.quantizer import CosineCodebook
from prism4m.tokenizers.registry import load_tokenizer
from prism4m.tokenizers.vq import VQTokenizer, vq_architecture


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_vq(modality: str, input_size: int, vocab: int = 64, channels: int = 3) -> VQTokenizer:
    spec = get_spec(modality)
    arch = vq_architecture(spec, input_size, SIZES["tiny"], vocab, channels)
    g = arch["grid"]
    card = TokenizerCard(type="vq", modality=modality, vocab_size=vocab, n_tokens=g * g, token_grid=[g, g],
                         input_size=input_size, patch_size=spec.patch_size, architecture=arch)
    torch.manual_seed(0)
    return VQTokenizer.create(card)


@pytest.mark.parametrize("modality,input_size,channels,make_input,recon_shape", [
    ("rgb", 64, 3, lambda: torch.randn(3, 3, 64, 64), (3, 3, 64, 64)),
    ("canny_edge", 32, 1, lambda: torch.randn(3, 1, 32, 32), (3, 1, 32, 32)),
    ("semseg_coco", 32, 1, lambda: torch.randint(0, 134, (3, 32, 32)), (3, 32, 32)),
    ("dinov2", 56, 12, lambda: torch.randn(3, 12, 4, 4), (3, 12, 4, 4)),
])
def test_vq_round_trip_shapes(modality, input_size, channels, make_input, recon_shape):
    tok = make_vq(modality, input_size, channels=channels)
    grid = input_size // get_spec(modality).patch_size
    ids = tok.encode(make_input())
    assert ids.shape == (3, grid * grid) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < tok.card.vocab_size
    recon = tok.decode(ids)
    assert recon.shape == recon_shape
    if modality == "semseg_coco":
        assert recon.min() >= 0 and recon.max() < 134  # decoded class ids, not logits


def test_mlp_round_trip_shapes():
    arch = mlp_architecture(SIZES["tiny"], channels=24, n_tokens=16, codebook_size=128)
    card = TokenizerCard(type="mlp", modality="dinov2_global", vocab_size=128, n_tokens=16, architecture=arch)
    tok = MLPTokenizer.create(card)
    ids = tok.encode(torch.randn(5, 24))
    assert ids.shape == (5, 16) and ids.max() < 128
    assert tok.decode(ids).shape == (5, 24)


def test_save_load_gives_same_tokens_and_hash_tracks_weights(tmp_path):
    tok = make_vq("rgb", 32)
    tok.card.training = {"config_hash": "x"}
    tok.save(str(tmp_path / "a"))
    loaded = load_tokenizer(str(tmp_path / "a"))
    x = torch.randn(4, 3, 32, 32)
    assert np.array_equal(loaded.encode(x), tok.encode(x))
    assert loaded.card.card_hash() == tok.card.card_hash()
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["type"] == "vq" and card["token_grid"] == [2, 2] and card["weights"]["sha256"]

    # metrics are not identity: a re-written card with new metrics keeps its hash
    loaded.card.metrics = {"psnr": 1.0}
    assert loaded.card.card_hash() == tok.card.card_hash()
    # other weights → another hash
    with torch.no_grad():
        other = make_vq("rgb", 32)
        other.model.to_latent.weight.add_(1.0)
    other.save(str(tmp_path / "b"))
    assert load_tokenizer(str(tmp_path / "b")).card.card_hash() != tok.card.card_hash()


def test_corrupt_weights_are_refused(tmp_path):
    tok = make_vq("rgb", 32)
    tok.save(str(tmp_path / "a"))
    path = tmp_path / "a" / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_tokenizer(str(tmp_path / "a"))


def test_codebook_used_and_updated_after_a_few_steps():
    tok = make_vq("rgb", 32, vocab=64)
    model = tok.model.train()
    before = model.codebook.embed.clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    for _ in range(3):
        recon, ids, commit = model(x)
        loss = ((recon - x) ** 2).mean() + 0.25 * commit
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert bool(model.codebook.initted)
    assert not torch.allclose(before, model.codebook.embed)  # EMA moved the codes
    usage = codebook_usage(torch.as_tensor(tok.encode(x)), 64)
    assert usage["usage"] > 0 and usage["perplexity"] >= 1.0


def test_dead_codes_are_reseeded_from_the_batch():
    cb = CosineCodebook(num_codes=16, dim=8, decay=0.5).train()
    data = torch.nn.functional.normalize(torch.randn(256, 8), dim=-1)
    cb(data)  # init from data
    with torch.no_grad():
        cb.embed[:8] = -cb.embed[:8].abs()  # push half the codes away...
        cb.cluster_size[:8] = 0.0           # ...and mark them unused
    data = data.abs()  # every vector now in the positive orthant: codes 0..7 never win
    cb(torch.nn.functional.normalize(data, dim=-1))
    # the starved codes were replaced by batch vectors (unit norm, positive orthant)
    assert (cb.embed[:8] >= 0).all()
    assert torch.allclose(cb.embed.norm(dim=-1), torch.ones(16), atol=1e-5)


def test_codebook_usage_statistics():
    u = codebook_usage(torch.tensor([0, 1, 2, 3] * 10), 8)
    assert u["usage"] == 0.5 and abs(u["perplexity"] - 4.0) < 1e-9
    u = codebook_usage(torch.tensor([5] * 7), 8)
    assert u["codes_used"] == 1 and abs(u["perplexity"] - 1.0) < 1e-9
