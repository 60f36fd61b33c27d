"""Data order and augmentation that depend only on ``(seed, stage, epoch, index)`` (exact resume)."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler

from ..utils import preserved_rng, seed_cpu_generators

# --------------------------------------------------------------------------- data order


def _mix(*values: int) -> int:
    """A well-spread 63-bit seed from small non-negative ints (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochSampler(Sampler):
    """Yields keys ``(stage, epoch, index)``: a permutation of ``range(n)`` drawn from ``(seed, stage, epoch)``.

    The permutation depends only on the seed, the stage index and the epoch (set with
    :meth:`set_epoch`, as ``DistributedSampler``), so any epoch can be replayed, and the keys
    carry the position that :class:`SeededItems` needs to seed augmentation.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.stage = 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator()
        g.manual_seed(_mix(self.seed, 0, self.stage, self.epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        s, e = self.stage, self.epoch
        return iter([(s, e, i) for i in self.indices()])

    def __len__(self) -> int:
        return self.n


class SeededItems(Dataset):
    """Wraps a map-style dataset: item ``(stage, epoch, i)`` is ``dataset[i]`` drawn under seeded generators.

    ``random``, numpy and torch's CPU generator are seeded from ``(seed, stage, epoch, i)`` for the
    call and restored after it, so random augmentation of an item is reproducible on its own and
    loading data never moves the caller's generators. A dataset that says it draws no random
    number (``deterministic = True``: e.g. a :class:`~medalign_lite.data.dataset.ManifestDataset`
    with the eval transform) is read directly: seeding and restoring three generators per item
    would change nothing and cost a few milliseconds per batch.
    """

    def __init__(self, dataset: Dataset, seed: int):
        if isinstance(dataset, IterableDataset):
            raise TypeError("the trainer needs a map-style dataset (with __len__ and __getitem__), got an IterableDataset")
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        stage, epoch, index = key
        if getattr(self.dataset, "deterministic", False):
            return self.dataset[index]
        with preserved_rng(cuda=False):
            seed_cpu_generators(_mix(self.seed, 1, stage, epoch, index))
            return self.dataset[index]
