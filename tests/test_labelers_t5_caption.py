"""t5_caption: T5 encoder embeddings of the committed caption, as ml-4m reads them.

The checkpoint is a tiny random `T5EncoderModel` saved with save_pretrained next to a T5
tokenizer built offline: a Unigram model (T5's sentencepiece model type) trained with the
`tokenizers` library on a few sentences, wrapped in transformers' `T5TokenizerFast` (in
transformers 5 the tokenizers-backed `T5Tokenizer`) with T5's special tokens (`<pad>` 0,
`</s>` 1, `<unk>` 2) and saved as `tokenizer.json`. The labeler loads both from the directory
(T5EncoderModel + AutoTokenizer), the path a user's `google/t5-v1_1-xxl` download takes.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from prism4m.labelers.base import LabelInput, MissingWeightsError
from prism4m.labelers.registry import make_labeler
from prism4m.labelers.weights import save_random_weights_marker

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAPTIONS = {
    "astronaut": "an astronaut in a white suit in front of a flag",
    "chelsea": "a cat looking to the side",
    "coffee": "a cup of coffee on a saucer",
    # longer than max_tokens 16 below: truncated, ends with </s>
    "rocket": " ".join(["a rocket on the launch pad under a blue sky"] * 4),
}
MAX_TOKENS = 16


def build_tiny_t5(directory: Path) -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=100, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(list(CAPTIONS.values()) * 10 + ["a photo of a dog", "a man with a camera"] * 10, trainer)
    tokenizer = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                extra_ids=0)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    directory.mkdir(parents=True, exist_ok=True)
    T5EncoderModel(cfg).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    save_random_weights_marker(directory, note="tiny T5 encoder")
    return str(directory)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "t5")


def direct_embedding(t5_dir: str, text: str) -> tuple[np.ndarray, list[int]]:
    """T5EncoderModel on the caption alone (no padding), float32: the reference."""
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(t5_dir)
    model = T5EncoderModel.from_pretrained(t5_dir).eval()
    ids = tok(text, max_length=MAX_TOKENS, truncation=True, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model(input_ids=ids).last_hidden_state[0].numpy(), ids[0].tolist()


def ml4m_read(data: bytes) -> np.ndarray:
    """What ml-4m's CaptionEmbTransform hands the model: np.load (no pickle), emb[0][mask_valid[0]]."""
    sample = np.load(io.BytesIO(data))
    emb, mask_valid = sample["emb"], sample["mask_valid"].astype(bool)
    assert emb.shape[0] == mask_valid.shape[0] == 1
    return emb[0][mask_valid[0]]


def test_no_checkpoint_names_the_config_key(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"labelers\.t5_caption\.checkpoint"):
        make_labeler("t5_caption", {"device": "cpu"}).ensure_setup()
    with pytest.raises(MissingWeightsError, match=r"labelers\.t5_caption\.checkpoint"):
        make_labeler("t5_caption", {"checkpoint": str(tmp_path), "device": "cpu"}).ensure_setup()


def test_checkpoint_without_tokenizer_is_missing_weights(t5_dir, tmp_path):
    # AutoTokenizer would build an empty vocabulary here; the labeler refuses instead
    bare = tmp_path / "bare"
    shutil.copytree(t5_dir, bare)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bare / f).unlink()
    with pytest.raises(MissingWeightsError, match=r"no tokenizer .*labelers\.t5_caption\.checkpoint"):
        make_labeler("t5_caption", {"checkpoint": str(bare), "device": "cpu"}).ensure_setup()


def test_npz_layout_and_values_match_the_encoder(t5_dir):
    lab = make_labeler("t5_caption", {"checkpoint": t5_dir, "device": "cpu", "max_tokens": MAX_TOKENS})
    batch = [LabelInput(k, np.zeros((8, 8, 3), np.uint8), {"caption": c.encode()}) for k, c in CAPTIONS.items()]
    out = lab.label_batch(batch)
    assert lab.model_provenance()["random_weights"] is True
    for (key, caption), data in zip(CAPTIONS.items(), out):
        with np.load(io.BytesIO(data), allow_pickle=False) as z:  # no pickled objects inside
            assert sorted(z.files) == ["emb", "mask_valid"]
            emb, mask = z["emb"], z["mask_valid"]
        assert emb.dtype == np.float16 and emb.shape == (1, MAX_TOKENS, 32)
        assert mask.dtype == bool and mask.shape == (1, MAX_TOKENS)
        want, ids = direct_embedding(t5_dir, caption)
        assert ids[-1] == 1  # </s>, also when truncated
        # valid tokens first, then padding, and as many as the tokenizer gives
        assert mask[0].tolist() == [True] * len(ids) + [False] * (MAX_TOKENS - len(ids))
        got = ml4m_read(data).astype(np.float32)
        assert got.shape == want.shape
        # float16 storage: ~3 significant digits; padding must not change the valid rows
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
        assert not emb[0][~mask[0]].any()  # padded rows are zeros
    assert len(direct_embedding(t5_dir, CAPTIONS["rocket"])[1]) == MAX_TOKENS


def test_empty_caption_raises(t5_dir):
    lab = make_labeler("t5_caption", {"checkpoint": t5_dir, "device": "cpu"})
    with pytest.raises(ValueError, match="empty caption"):
        lab.label_batch([LabelInput("x", np.zeros((8, 8, 3), np.uint8), {"caption": b"  "})])


def test_label_stage_on_source_captions_reads_back_as_ml4m_does(tmp_path, ray_session, t5_dir):
    import webdataset.autodecode as wds_decode

    from prism4m.contract.store import DatasetStore
    from prism4m.demo import write_photo_corpus
    from prism4m.pipeline.ingest import ingest
    from prism4m.pipeline.label import label

    corpus = write_photo_corpus(tmp_path / "corpus", ("astronaut", "chelsea", "coffee", "rocket", "camera"))
    for name, caption in CAPTIONS.items():  # camera has no sidecar: its caption is invalid
        (corpus / f"{name}.txt").write_text(caption)
    root = str(tmp_path / "ds")
    ingest(str(corpus), root, shard_size=3, short_side=64, n_crops=1, show_progress=False)
    summary = label(root, ["t5_caption"], {"t5_caption": {"checkpoint": t5_dir, "max_tokens": MAX_TOKENS,
                                                          "num_gpus": 0, "num_cpus": 0.5}},
                    workers=1, show_progress=False)
    assert summary.ok, summary.failures
    store = DatasetStore(root)
    seen = {}
    for shard, rec in store.ledger("t5_caption").items():
        assert rec["random_weights"] is True
        captions = {m.key: m for m in store.read_shard("caption", shard)}
        members = store.read_shard("t5_caption", shard)
        assert [m.key for m in members] == [m.key for m in store.read_shard("rgb", shard)]
        for m in members:
            if captions[m.key].is_invalid:
                assert m.is_invalid and m.key in rec["invalid"]
                continue
            text = captions[m.key].data.decode()
            # ml-4m's webdataset path: webdataset's own npz decoder, then CaptionEmbTransform
            decoded = wds_decode.basichandlers("t5_caption.npz", m.data)
            assert decoded["emb"].shape == (1, MAX_TOKENS, 32)
            want, _ = direct_embedding(t5_dir, text)
            got = ml4m_read(m.data).astype(np.float32)
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
            seen[text] = True
    assert set(seen) == set(CAPTIONS.values())
    assert sum(len(rec.get("invalid", [])) for rec in store.ledger("t5_caption").values()) == 1
