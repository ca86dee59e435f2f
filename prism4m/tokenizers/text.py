"""WordPiece text tokenizer in ml-4m's layout (4M_FORMAT.md §4.2), built with HF ``tokenizers``.

Ids: ``[PAD]``=0, ``[UNK]``=1, ``[SOS]``=2, ``[EOS]``=3, sentinels ``[S_0]``..``[S_199]`` =
4..203, value tokens ``v0=0``..``v3=999`` = 204..4203, the 80 COCO class names (sorted
alphabetically, so ``dining table`` = 4231) = 4204..4283, then the learned word pieces.
Lower-casing BERT normaliser, BERT pre-tokeniser, ``##`` continuation prefix, no
post-processor (no SOS/EOS are added; the trainer appends EOS itself).

Value and class tokens are normalised added tokens, so ``Dining Table`` and ``v0=12`` are
one token each wherever they occur. Training learns the word pieces on the corpus text and
places them after the fixed block, so the layout never depends on the corpus. A published
ml-4m tokenizer JSON loads unchanged (``WordPieceTokenizer.from_json_url``); ``check_layout``
verifies that any loaded tokenizer has the fixed ids above.
"""

from __future__ import annotations

import posixpath
from typing import Iterable

import fsspec

from prism4m.labelers.metadata_fields import COCO_THINGS
from prism4m.tokenizers.card import TokenizerCard, join_url, write_card

TOKENIZER_FILE = "tokenizer.json"
NUM_SENTINELS = 200
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[SOS]", "[EOS]"]
# the ids the trainer writes itself (padding, end of sequence, span sentinels [S_k] = SENTINEL_0_ID + k)
PAD_ID = SPECIAL_TOKENS.index("[PAD]")
EOS_ID = SPECIAL_TOKENS.index("[EOS]")
SENTINEL_0_ID = len(SPECIAL_TOKENS)
COCO_CLASSES = sorted(COCO_THINGS)  # ml-4m's text vocabulary holds the COCO class names


def special_tokens(num_sentinels: int = NUM_SENTINELS) -> list[str]:
    return SPECIAL_TOKENS + [f"[S_{i}]" for i in range(num_sentinels)]


def value_tokens(n_values: int = 4, bins: int = 1000) -> list[str]:
    return [f"v{j}={i}" for j in range(n_values) for i in range(bins)]


def fixed_tokens(num_sentinels: int = NUM_SENTINELS) -> list[str]:
    """The id-ordered block every tokenizer starts with."""
    return special_tokens(num_sentinels) + value_tokens() + COCO_CLASSES


def _assemble(vocab: dict[str, int], num_sentinels: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(special_tokens(num_sentinels))
    tok.add_tokens([AddedToken(t, normalized=True) for t in value_tokens() + COCO_CLASSES])
    return tok


def train_wordpiece(texts: Iterable[str], vocab_size: int = 30000, num_sentinels: int = NUM_SENTINELS,
                    min_frequency: int = 2):
    """An HF ``tokenizers.Tokenizer`` in ml-4m's layout, word pieces learned on ``texts``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    fixed = fixed_tokens(num_sentinels)
    if vocab_size <= len(fixed):
        raise ValueError(f"vocab_size must exceed the {len(fixed)} fixed tokens")
    learner = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    learner.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None)
    learner.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size - len(fixed) + len(SPECIAL_TOKENS),
                                        min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                        continuing_subword_prefix="##", show_progress=False)
    learner.train_from_iterator(texts, trainer)
    vocab = {t: i for i, t in enumerate(fixed)}
    for piece, _ in sorted(learner.get_vocab().items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    return _assemble(vocab, num_sentinels)


class LayoutError(ValueError):
    """A tokenizer whose special/value/class ids differ from ml-4m's layout."""


class WordPieceTokenizer:
    type = "wordpiece"

    def __init__(self, hf, card: TokenizerCard | None = None):
        self.hf = hf
        self.card = card

    # ------------------------------------------------------------------ IO
    @classmethod
    def from_json_url(cls, url: str) -> "WordPieceTokenizer":
        """A tokenizer.json (ours or ml-4m's text_tokenizer_4m_wordpiece_30k.json)."""
        from tokenizers import Tokenizer

        with fsspec.open(url, "r") as f:
            tok = cls(Tokenizer.from_str(f.read()))
        tok.check_layout()
        return tok

    @classmethod
    def load(cls, url: str, card: TokenizerCard, device: str = "cpu") -> "WordPieceTokenizer":
        tok = cls.from_json_url(join_url(url, card.weights.get("file", TOKENIZER_FILE)))
        tok.card = card
        return tok

    def save(self, out_dir: str, card: TokenizerCard) -> TokenizerCard:
        import hashlib

        data = self.hf.to_str().encode()
        fs, path = fsspec.core.url_to_fs(str(out_dir))
        fs.makedirs(path, exist_ok=True)
        fs.pipe_file(posixpath.join(path, TOKENIZER_FILE), data)
        card.weights = {"file": TOKENIZER_FILE, "sha256": hashlib.sha256(data).hexdigest()}
        card.vocab_size = self.vocab_size
        write_card(out_dir, card)
        self.card = card
        return card

    # ------------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def check_layout(self, num_sentinels: int = NUM_SENTINELS) -> None:
        """Raise LayoutError unless the fixed block has ml-4m's ids."""
        wrong = [(t, i, self.hf.token_to_id(t)) for i, t in enumerate(fixed_tokens(num_sentinels))
                 if self.hf.token_to_id(t) != i]
        if wrong:
            t, want, got = wrong[0]
            raise LayoutError(f"token {t!r} has id {got}, ml-4m's layout needs {want} ({len(wrong)} ids differ)")
