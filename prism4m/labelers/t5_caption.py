"""T5 caption embeddings (`t5_caption`): a T5 encoder's last hidden states over the caption.

4M-21 takes `t5_caption` as an input-only modality: per sample an `.npz` with `emb`
`(n_seq, L, D)` and `mask_valid` `(n_seq, L)`, of which ml-4m's `CaptionEmbTransform` keeps
`emb[i][mask_valid[i]]` (4M_FORMAT.md §1.5). ml-4m's default `orig_emb_dim` is 4096 and its
plotting labels the modality "T5 XXL": the encoder of `google/t5-v1_1-xxl` (d_model 4096) fits;
which T5 checkpoint 4M-21 used is not published, so `checkpoint` is the user's choice.

Input: the committed caption of the sample (`caption/KEY.txt`: the corpus's own caption kept by
ingest, or the caption labeler's). A sample whose caption is invalid becomes an invalid record
(the label stage's rule for a missing required input); an empty caption raises, so it too.

Computation: the checkpoint's own tokenizer (AutoTokenizer from the same directory, which
must hold `tokenizer.json`, or `spiece.model` with the `sentencepiece` package installed;
without either, setup fails naming the key rather than tokenizing with an empty vocabulary) with
`max_length=max_tokens` (77, ml-4m's `max_tokens`), truncation, padding to `max_tokens`, and its
special tokens (T5 appends `</s>`); then `T5EncoderModel(input_ids, attention_mask)
.last_hidden_state`. `mask_valid` is the tokenizer's attention mask.

Output (KEY.npz, `np.savez_compressed`, no pickled objects): `emb` float16 `(1, max_tokens, D)`
and `mask_valid` bool `(1, max_tokens)`; one sequence per sample (a `.txt` caption is one
string for every crop). Rows where `mask_valid` is False are zeros (ml-4m drops them; zeros
compress). T5 v1.1 overflows in float16 arithmetic: run it in float32 or bfloat16 (`dtype`);
an embedding that is not finite after the float16 cast makes the sample invalid rather than
writing inf/NaN.
"""

from __future__ import annotations

import io

import numpy as np
from pydantic import Field

from prism4m.labelers.base import LabelInput, MissingWeightsError, Resources
from prism4m.labelers.hf import HFLabeler, HFLabelerConfig, checkpoint_dir
from prism4m.labelers.weights import missing_weights, resolve_checkpoint

#: files a T5 tokenizer loads from: the tokenizers JSON, or sentencepiece's model (which
#: transformers converts only with the `sentencepiece` package installed)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


class T5CaptionConfig(HFLabelerConfig):
    max_tokens: int = Field(77, ge=2, description="tokens per caption incl. </s> (ml-4m's t5_caption max_tokens)")


def encode_t5_npz(emb: np.ndarray, mask_valid: np.ndarray) -> bytes:
    """The member ml-4m reads: `emb` float16 (n_seq, L, D), `mask_valid` bool (n_seq, L)."""
    emb = np.asarray(emb, dtype=np.float16)
    mask_valid = np.asarray(mask_valid, dtype=bool)
    if emb.ndim != 3 or mask_valid.shape != emb.shape[:2]:
        raise ValueError(f"emb {emb.shape} / mask_valid {mask_valid.shape}: want (n_seq, L, D) / (n_seq, L)")
    if not np.isfinite(emb).all():
        raise ValueError("T5 embedding is not finite in float16 (run the encoder in float32 or bfloat16)")
    emb = np.where(mask_valid[..., None], emb, np.float16(0))
    buf = io.BytesIO()
    np.savez_compressed(buf, emb=emb, mask_valid=mask_valid)
    return buf.getvalue()


def decode_t5_npz(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(emb, mask_valid) of a member, read as ml-4m reads it (np.load, no pickle)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return z["emb"], z["mask_valid"].astype(bool)


class T5CaptionLabeler(HFLabeler):
    name = "t5_caption"
    requires = ("caption",)
    Config = T5CaptionConfig
    model_class = "T5EncoderModel"
    processor_class = "AutoTokenizer"
    example_checkpoint = "google/t5-v1_1-xxl"
    default_resources = Resources(num_cpus=1, num_gpus=0.25, batch_size=32)

    def setup(self) -> None:
        # AutoTokenizer on a directory without tokenizer files silently builds an empty T5
        # vocabulary (every word <unk>): refuse that before loading anything.
        path = checkpoint_dir(resolve_checkpoint(self.name, self.config.checkpoint, self.example_checkpoint).path)
        if not any((path / f).exists() for f in TOKENIZER_FILES):
            raise missing_weights(self.name, self.example_checkpoint,
                                  f"{str(path)!r} has no tokenizer ({' or '.join(TOKENIZER_FILES)}) next to the "
                                  "T5 weights")
        try:
            super().setup()
        except MissingWeightsError:
            raise
        except (ValueError, ImportError, OSError) as exc:  # e.g. spiece.model without `sentencepiece`
            raise missing_weights(self.name, self.example_checkpoint,
                                  f"the tokenizer in {str(path)!r} could not be loaded ({type(exc).__name__}: "
                                  f"{str(exc)[:200]}); a spiece.model needs `pip install sentencepiece`, a "
                                  "tokenizer.json does not") from None

    def predict(self, batch: list[LabelInput]) -> list[bytes]:
        texts = [s.inputs["caption"].decode("utf-8").strip() for s in batch]
        empty = [s.key for s, t in zip(batch, texts) if not t]
        if empty:
            raise ValueError(f"empty caption for {', '.join(empty)}")
        enc = self.processor(texts, max_length=self.config.max_tokens, padding="max_length", truncation=True,
                             return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        emb = hidden.float().cpu().numpy()
        valid = mask.bool().cpu().numpy()
        return [encode_t5_npz(emb[i:i + 1], valid[i:i + 1]) for i in range(len(batch))]
