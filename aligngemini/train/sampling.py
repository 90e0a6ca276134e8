"""Data order and data-side randomness that a resumed run can reproduce exactly.

Two rules make ``--resume`` exact whatever the number of loader workers or processes:

- the order of an epoch is a permutation that is a pure function of ``(seed, epoch)``, sharded across
  processes the way ``DistributedSampler`` does it, so a resumed run skips the batches it has seen
  without loading them;
- each item is produced under RNG states seeded from ``(seed, epoch, index)`` (torch CPU, numpy,
  python ``random``) and the caller's states are put back afterwards, so an augmentation draws the same
  numbers for the same item in the same epoch, in any worker, after any resume.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

# Tag mixed into item seeds of evaluation passes, so they never collide with a training epoch.
EVAL_EPOCH = 2**31 - 1


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one item of one epoch (well mixed: neighbours do not get related seeds)."""
    state = np.random.SeedSequence(
        [seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, index & 0xFFFFFFFF]
    ).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The order of ``range(n)`` in ``epoch``: the same for every process and every resume."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator()
    g.manual_seed(item_seed(seed, epoch, 2**32 - 1))
    return torch.randperm(n, generator=g).tolist()


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one process's share of an epoch, starting after ``start_batch`` batches.

    The epoch's permutation is padded by wrapping around to a multiple of ``num_replicas`` (so every
    process runs the same number of batches) and process ``rank`` takes every ``num_replicas``-th index.
    With one process and ``batch_size * num_replicas`` per batch, a step sees exactly the items that the
    ``num_replicas`` processes see together in the sharded run.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        start_batch: int = 0,
    ) -> None:
        if n <= 0:
            raise ValueError("the dataset is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_replicas, self.rank, self.start_batch = num_replicas, rank, start_batch

    def per_replica(self) -> int:
        return math.ceil(self.n / self.num_replicas)

    def num_batches(self) -> int:
        """Batches per epoch for each process (before skipping ``start_batch``)."""
        k = self.per_replica()
        return k // self.batch_size if self.drop_last else math.ceil(k / self.batch_size)

    def indices(self) -> list[int]:
        order = epoch_permutation(self.n, self.seed, self.epoch, self.shuffle)
        total = self.per_replica() * self.num_replicas
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.indices()
        for b in range(self.start_batch, self.num_batches()):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size]

    def __len__(self) -> int:
        return max(0, self.num_batches() - self.start_batch)


class SeededItems(Dataset):
    """``dataset[i]`` computed under RNG states seeded by ``(seed, epoch, i)``; the caller's states survive.

    Only the CPU generators are touched (torch's default CPU generator, numpy's legacy global one and
    python's ``random``), so model-side randomness on an accelerator is unaffected.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        s = item_seed(self.seed, self.epoch, index)
        torch_state = torch.get_rng_state()
        np_state = np.random.get_state()
        py_state = random.getstate()
        try:
            torch.default_generator.manual_seed(s)
            np.random.seed(s & 0xFFFFFFFF)
            random.seed(s)
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)
            np.random.set_state(np_state)
            random.setstate(py_state)
