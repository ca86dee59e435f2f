"""Helpers for tokenize tests that add a label folder to a copy of the ingested photo_root."""

from __future__ import annotations

import io
import shutil
from typing import Callable

from PIL import Image

from prism4m.contract.store import DatasetStore, Member, content_hash
from prism4m.pipeline.tokenize import tokenize


def rgb_sizes(store: DatasetStore, index: int) -> dict[str, tuple[int, int]]:
    """Key → (height, width) of the rgb images of shard ``index``, in shard order."""
    return {m.key: Image.open(io.BytesIO(m.data)).size[::-1] for m in store.iter_shard("rgb", index)}


def commit_labels(store: DatasetStore, index: int, folder: str, data: dict[str, bytes],
                  errors: list[dict] | None = None) -> None:
    """Commit ``folder``'s shard ``index`` (KEY.json members) as a labeler would."""
    producer = {"name": folder, "kind": "labeler", "class": "test geometry", "version": "1", "config": {}}
    store.commit_unit(index, {folder: [Member(k, "json", v) for k, v in data.items()]},
                      {folder: {"producer": producer, "inputs": {"rgb": content_hash(store.ledger("rgb")[index])}}},
                      {folder: errors or []})


def labelled_copy(src: str, dst: str, folder: str, record: Callable[[str, int, int], bytes]) -> str:
    """A copy of root ``src`` whose every sample gets ``record(key, height, width)`` in ``folder``."""
    shutil.copytree(src, dst)
    store = DatasetStore(dst)
    for index in sorted(store.ledger("rgb")):
        commit_labels(store, index, folder, {k: record(k, *hw) for k, hw in rgb_sizes(store, index).items()})
    return dst


def tokenized_copy(src: str, dst: str, tokenizer: str, folder: str) -> str:
    """A copy of root ``src`` tokenized with ``tokenizer``, which must write both shards of ``folder``."""
    shutil.copytree(src, dst)
    summary = tokenize(dst, [tokenizer], workers=1, show_progress=False)
    assert summary.ok, summary.failures
    assert summary.planned == {folder: 2}
    return dst


# The tokenize stage encodes many samples' crops per batch (in a Ray worker); a test encodes one
# sample's. Batched float maths is not bit-identical across batch sizes or CPUs, so a code whose
# cosine similarity ties another's to ~1e-6 may come out either way: compare as "a nearest code".
CODE_TIE = 1e-4  # cosine similarity; float32 noise of these tiny encoders is ~1e-6


def assert_nearest_codes(tok, inputs, ids) -> None:
    """``ids`` (n, n_tokens) are nearest codebook entries of ``inputs``' latents, up to CODE_TIE;
    wherever the nearest code leads by more than CODE_TIE they equal the in-process encoding."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        codebook = tok.model.codebook
        latent = tok.model.encode_latent(tok._tensor(inputs))
        sims = (F.normalize(latent.reshape(-1, codebook.dim), dim=-1) @ codebook.embed.t()).cpu().numpy()
    ids = np.asarray(ids).reshape(-1)
    assert sims.shape[0] == ids.size, (sims.shape, ids.shape)
    best = sims.max(axis=1)
    got = sims[np.arange(ids.size), ids]
    assert (got >= best - CODE_TIE).all(), float((best - got).max())
    clear = np.sort(sims, axis=1)[:, -2] < best - CODE_TIE
    assert (ids[clear] == sims.argmax(axis=1)[clear]).all()
