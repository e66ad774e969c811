"""Which samples form each micro-batch: repeats expanded, same-size samples only (buckets), a
fresh shuffle every epoch. A pure function of (seed, epoch), so a resumed run sees exactly the
order the interrupted one would have seen, with no RNG state to save."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class OrderItem:
    size: tuple[int, ...]  # latent shape: only equal sizes share a batch
    repeats: int = 1


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class MicroBatchOrder:
    def __init__(self, items: Sequence[OrderItem], batch_size: int, seed: int):
        if not items:
            raise ValueError("the dataset is empty: there is nothing to train on")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {batch_size}")
        self.items = list(items)
        self.batch_size = batch_size
        self.seed = seed
        self._epochs: dict[int, list[list[int]]] = {}
        buckets: dict[tuple, int] = {}
        for item in self.items:
            buckets[item.size] = buckets.get(item.size, 0) + max(1, item.repeats)
        self.batches_per_epoch = sum(math.ceil(n / batch_size) for n in buckets.values())
        self.samples_per_epoch = sum(buckets.values())

    def epoch(self, epoch: int) -> list[list[int]]:
        """The epoch's micro-batches, each a list of sample indices of one size."""
        if epoch not in self._epochs:
            self._epochs = {epoch: self._build(epoch)}  # only the current epoch is kept
        return self._epochs[epoch]

    def _build(self, epoch: int) -> list[list[int]]:
        g = _epoch_generator(self.seed, epoch)
        buckets: dict[tuple, list[int]] = {}
        for index, item in enumerate(self.items):
            buckets.setdefault(item.size, []).extend([index] * max(1, item.repeats))
        batches = []
        for size in sorted(buckets):
            members = buckets[size]
            shuffled = [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
            batches += [shuffled[i:i + self.batch_size] for i in range(0, len(shuffled), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def micro_batch(self, index: int) -> tuple[int, list[int]]:
        """(epoch, sample indices) of the index-th micro-batch of the run."""
        epoch, within = divmod(index, self.batches_per_epoch)
        return epoch, self.epoch(epoch)[within]
