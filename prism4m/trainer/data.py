"""The training stream: an iterable dataset of masked batches whose position is one number.

- every (DDP rank, dataloader worker) pair is a *slot*; each epoch the committed shards are
  permuted with the seed and dealt round-robin to slots (or, with fewer shards than slots,
  every slot reads all shards and keeps every n-th sample);
- a per-slot shuffle buffer mixes raw members within an epoch;
- crop choice and masking draw from an RNG keyed on (seed, slot, sample ordinal), so a
  sample is the same whether it was reached by running or by skipping;
- workers batch themselves; the DataLoader hands batches out round-robin by worker, so
  "batches consumed" determines every worker's position. Resuming replays only the raw
  members of the current epoch of each slot (no decoding or masking).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .decode import SampleDecoder
from .masking import UnifiedMasker
from .shards import ShardSource, iter_shard, shard_length


def collate(samples: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {k: torch.from_numpy(np.stack([s[name][k] for s in samples])) for k in samples[0][name]}
        for name in samples[0]
    }


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


class TokenShardDataset(IterableDataset):
    """Batches of masked samples; see the module docstring for the stream layout.

    ``repeat=True`` streams forever (training); ``repeat=False`` makes one pass (eval).
    """

    def __init__(
        self,
        sources: Sequence[ShardSource],
        decoder: SampleDecoder,
        masker: UnifiedMasker,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        repeat: bool = True,
        rank: int = 0,
        world_size: int = 1,
        shuffle_shards: bool = True,
    ) -> None:
        if not sources:
            raise ValueError("the loader got no shards")
        self.sources = list(sources)
        self.decoder = decoder
        self.masker = masker
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.repeat = repeat
        self.rank = rank
        self.world_size = world_size
        self.shuffle_shards = shuffle_shards
        self.batches_consumed = 0  # set by TokenLoader before workers start (resume)

    # -- which samples belong to a slot ---------------------------------------------------
    def _epoch_plan(self, epoch: int, slot: int, n_slots: int) -> tuple[list[ShardSource], int, int]:
        """(shards, stride, offset) of one slot in one epoch: keep samples i % stride == offset."""
        order = list(range(len(self.sources)))
        if self.shuffle_shards:
            order = list(_rng(self.seed, epoch, 0x5EED).permutation(len(self.sources)))
        shards = [self.sources[i] for i in order]
        if len(shards) >= n_slots:
            return shards[slot::n_slots], 1, 0
        return shards, n_slots, slot

    def _epoch_length(self, epoch: int, slot: int, n_slots: int) -> int:
        shards, stride, offset = self._epoch_plan(epoch, slot, n_slots)
        total = sum(shard_length(s) for s in shards)
        return len(range(offset, total, stride))

    def _raw_epoch(self, epoch: int, slot: int, n_slots: int) -> Iterator[tuple[str, dict, dict]]:
        shards, stride, offset = self._epoch_plan(epoch, slot, n_slots)
        ordinal = 0
        for source in shards:
            for key, members in iter_shard(source):
                if ordinal % stride == offset:
                    yield key, members, source.invalid
                ordinal += 1

    def _shuffled(self, items: Iterator, rng: np.random.Generator) -> Iterator:
        if self.shuffle_buffer <= 1:
            yield from items
            return
        buffer: list = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = int(rng.integers(len(buffer)))
            yield buffer[j]
            buffer[j] = item
        for j in rng.permutation(len(buffer)):
            yield buffer[j]

    def slot_samples(self, slot: int, n_slots: int, skip: int = 0) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        """Masked samples of one slot, starting after ``skip`` samples of its stream."""
        epoch, ordinal = 0, 0
        while self.repeat and skip > 0:  # skip whole epochs without reading them
            length = self._epoch_length(epoch, slot, n_slots)
            if length == 0:
                raise ValueError(f"slot {slot} of {n_slots} has no samples: use fewer workers or ranks")
            if skip < length:
                break
            skip -= length
            ordinal += length
            epoch += 1
        while True:
            produced = 0
            stream = self._shuffled(self._raw_epoch(epoch, slot, n_slots), _rng(self.seed, epoch, slot, 0xB0F))
            for key, members, invalid in stream:
                produced += 1
                if skip > 0:
                    skip -= 1
                    ordinal += 1
                    continue
                rng = _rng(self.seed, slot, ordinal, 0x3A5C)
                ordinal += 1
                yield self.masker(self.decoder(key, members, invalid, rng), rng)
            if not self.repeat:
                return
            if produced == 0:
                raise ValueError(f"slot {slot} of {n_slots} has no samples: use fewer workers or ranks")
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        info = get_worker_info()
        n_workers = info.num_workers if info else 1
        physical = info.id if info else 0
        # A fresh DataLoader iterator starts at worker 0; rotate so batch b of the whole run
        # always comes from logical worker b % n_workers.
        logical = (physical + self.batches_consumed) % n_workers
        done_by_me = max(0, (self.batches_consumed - logical + n_workers - 1) // n_workers)
        slot = self.rank * n_workers + logical
        n_slots = self.world_size * n_workers
        batch: list = []
        for sample in self.slot_samples(slot, n_slots, skip=done_by_me * self.batch_size):
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch:
            yield collate(batch)


class TokenLoader:
    """A DataLoader over TokenShardDataset whose position survives checkpoints."""

    def __init__(self, dataset: TokenShardDataset, num_workers: int = 0, prefetch_factor: int = 4) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.batches_consumed = 0

    def __iter__(self) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
        self.dataset.batches_consumed = self.batches_consumed
        kwargs: dict[str, Any] = {"batch_size": None, "num_workers": self.num_workers}
        if self.num_workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor
            kwargs["persistent_workers"] = False
        for batch in DataLoader(self.dataset, **kwargs):
            self.batches_consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {
            "batches_consumed": self.batches_consumed,
            "num_workers": self.num_workers,
            "batch_size": self.dataset.batch_size,
            "world_size": self.dataset.world_size,
            "seed": self.dataset.seed,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        expected = {
            "num_workers": self.num_workers,
            "batch_size": self.dataset.batch_size,
            "world_size": self.dataset.world_size,
            "seed": self.dataset.seed,
        }
        changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if changed:
            raise ValueError(f"cannot resume the loader exactly: settings changed since the checkpoint {changed}")
        self.batches_consumed = int(state["batches_consumed"])
