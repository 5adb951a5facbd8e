"""Which examples go into which batch, and the per-example random streams.

fairseq forms audio batches by *duration*: examples are sorted by length (longest first, ties broken at
random), cut
greedily into batches whose ``longest clip x clips`` stays under ``max_tokens`` samples, and the batches
are shuffled; its collater then crops every clip of a batch to the shortest one. Batches of similar
length are what make that crop cheap. :class:`EpochBatchSampler` does the same here,
deterministically from ``(seed, epoch)`` so that a resumed run sees the same batches, and deals the
batches out over the processes itself (each process reads only its own examples).

Every example also gets its own random generator, seeded by ``(seed, epoch, example index)``: crops and
masks drawn from it do not depend on the batch size, the number of processes or DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler


def seeded_generator(*numbers: int) -> torch.Generator:
    """A generator seeded by a tuple of integers (Python hashes integer tuples the same in every process;
    strings would not be: their hash is salted per process)."""
    return torch.Generator().manual_seed(hash(tuple(int(n) for n in numbers)) & 0x7FFF_FFFF_FFFF_FFFF)


def example_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random stream of one example in one epoch (crops, then masks)."""
    return seeded_generator(seed, epoch, index)


class WithIndex(Dataset):
    """Adds each example's dataset index, from which its random stream is derived."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return index, self.dataset[index]


class EpochBatchSampler(Sampler[list[int]]):
    """This process's batches of one epoch: grouped by length (fairseq's audio batching) or in random
    order, packed under ``max_tokens`` and/or ``batch_size``, dealt out over the processes.

    Args:
        lengths: length of every example (audio: samples, already capped at the crop length).
        max_tokens: at most this many ``longest example x examples`` per batch (fairseq's ``max_tokens``).
        batch_size: at most this many examples per batch. At least one of the two must be given.
        seed: with the epoch, fixes the order (tie-breaking among equal lengths) and the batch order.
        shuffle: shuffle the batch order every epoch.
        group_by_length: longest examples first, as fairseq's ``ordered_indices``; else a random order.
        batches_per_update: micro-batches of one process per optimizer update (accumulation steps).
        num_replicas / rank: the processes, and which one this is.

    One update takes ``num_replicas x batches_per_update`` neighbouring batches (process *r* gets the
    *r*-th, *(r + num_replicas)*-th, ... of them), so an update holds the same examples however it is
    split over processes and micro-batches. The processes read disjoint examples whose union is the
    whole epoch, and all get the same number of batches: the last update's examples are re-split
    evenly (merged with the one before if they are fewer than its batches). ``skip`` leaves out the
    first batches of this process (a resumed epoch). ``set_epoch`` selects the epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        max_tokens: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: bool = True,
        batches_per_update: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if max_tokens is None and batch_size is None:
            raise ValueError("give max_tokens, batch_size or both")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        longest = int(self.lengths.max()) if len(self.lengths) else 0
        if max_tokens is not None and longest > max_tokens:
            raise ValueError(
                f"max_tokens={max_tokens} is smaller than the longest example ({longest} samples); "
                "raise --max_tokens or lower --max_length_seconds"
            )
        run = batches_per_update * num_replicas
        if len(self.lengths) < run:
            raise ValueError(
                f"{len(self.lengths)} examples cannot fill {num_replicas} process(es) x {batches_per_update} "
                "micro-batch(es) of one update"
            )
        self.max_tokens, self.max_examples = max_tokens, batch_size
        self.seed, self.shuffle, self.group_by_length, self.epoch = seed, shuffle, group_by_length, 0
        self.batches_per_update, self.num_replicas, self.rank = batches_per_update, num_replicas, rank
        self.skip = 0
        self.batch_size = None  # batches vary in size
        self.drop_last = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        return seeded_generator(self.seed, self.epoch, -1)  # example indices are >= 0

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches of all processes, in the order they are dealt out."""
        generator = self._generator()
        permutation = torch.randperm(len(self.lengths), generator=generator)
        if self.group_by_length:
            # longest first, ties in random order (fairseq's ordered_indices)
            permutation = permutation[
                torch.sort(self.lengths[permutation], descending=True, stable=True).indices
            ]
        runs = self._runs(self._pack(permutation.tolist()))
        if self.shuffle:
            runs = [runs[i] for i in torch.randperm(len(runs), generator=generator).tolist()]
        return [batch for run in runs for batch in run]

    def batches(self) -> list[list[int]]:
        """This process's batches of the epoch (after ``skip``)."""
        size, replicas = self.batches_per_update * self.num_replicas, self.num_replicas
        every = self.global_batches()
        mine = [
            batch
            for start in range(0, len(every), size)
            for batch in every[start + self.rank : start + size : replicas]
        ]
        return mine[self.skip :]

    def _runs(self, batches: list[list[int]]) -> list[list[list[int]]]:
        """Group batches by update; re-split the last, incomplete update evenly."""
        size = self.batches_per_update * self.num_replicas
        runs = [batches[i : i + size] for i in range(0, len(batches), size)]
        if len(runs[-1]) < size:
            pool = [index for batch in runs.pop() for index in batch]
            if len(pool) < size:
                pool = [index for batch in runs.pop() for index in batch] + pool
            cuts = [round(i * len(pool) / size) for i in range(size + 1)]
            runs.append([pool[cuts[i] : cuts[i + 1]] for i in range(size)])
        return runs

    def _pack(self, order: list[int]) -> list[list[int]]:
        batches, current, longest = [], [], 0
        for index in order:
            length = int(self.lengths[index])
            grown = max(longest, length)
            too_many = self.max_examples is not None and len(current) + 1 > self.max_examples
            too_long = self.max_tokens is not None and grown * (len(current) + 1) > self.max_tokens
            if current and (too_many or too_long):
                batches.append(current)
                current, grown = [], length
            current.append(index)
            longest = grown
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def __len__(self) -> int:
        return len(self.batches())


class ExampleCollator:
    """Collates a batch with the modality's collator, then samples the masks — both drawing from each
    example's own generator (:func:`example_generator`), so crops and masks are the same whatever the
    batch size, process count or worker. Adds ``example_index`` (the dataset index of every row)."""

    def __init__(self, collate, sample_masks, config, seed: int):
        self.collate, self.sample_masks, self.config, self.seed = collate, sample_masks, config, seed
        self.epoch = 0

    def __call__(self, items):
        indices, examples = zip(*items)
        generators = [example_generator(self.seed, self.epoch, i) for i in indices]
        batch = self.collate(list(examples), generators)
        batch.update(self.sample_masks(self.config, batch, generators))
        batch["example_index"] = torch.tensor([int(i) for i in indices])
        return batch
