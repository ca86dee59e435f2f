"""Helpers for tokenize tests that add a label folder to a copy of the ingested photo_root."""

from __future__ import annotations

import io
import shutil
from typing import Callable

from PIL import Image

from prism4m.pipeline.store import DatasetStore, Member, content_hash
from prism4m.tokenizers import tokenize


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
