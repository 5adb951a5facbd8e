"""Which examples go into which batch, and the per-example random streams.

fairseq forms audio batches by *duration*: examples are sorted by length (longest first, ties broken at
random), cut
greedily into batches whose ``longest clip x clips`` stays under ``max_tokens`` samples, and the batches
are shuffled; its collater then crops every clip of a batch to the shortest one. Batches of similar
length are what make that crop cheap. :class:`LengthGroupedBatchSampler` does the same here,
deterministically from ``(seed, epoch)`` so that a resumed run sees the same batches.

Every example also gets its own random generator, seeded by ``(seed, epoch, example index)``: crops and
masks drawn from it do not depend on the batch size, the number of processes or DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler


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


class WithCounter(IterableDataset):
    """Streaming counterpart of :class:`WithIndex` (a running count per process)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __iter__(self):
        yield from enumerate(self.dataset)


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of examples of similar length, as fairseq builds them for audio.

    Args:
        lengths: length of every example (audio: samples, already capped at the crop length).
        max_tokens: at most this many ``longest example x examples`` per batch (fairseq's ``max_tokens``).
        batch_size: at most this many examples per batch. At least one of the two must be given.
        seed: with the epoch, fixes the tie-breaking among equal lengths and the order of the batches.
        shuffle: shuffle the order of the batches every epoch (the batches themselves only differ in
            which of several equally long examples they hold).
        batches_per_update: batches are served in runs of this many neighbours (processes x
            accumulation steps; accelerate deals them out one per process), so the examples of one update
            are the same as with one process and one micro-batch that many times larger.

    ``set_epoch`` (or the ``epoch`` attribute) selects the epoch. ``batch_size`` is ``None`` as an
    attribute, which tells accelerate that batches vary in size when it shards them over processes.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        max_tokens: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        batches_per_update: int = 1,
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
        self.max_tokens, self.max_examples = max_tokens, batch_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.batches_per_update = batches_per_update
        self.batch_size = None  # batches vary in size
        self.drop_last = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        return seeded_generator(self.seed, self.epoch, -1)  # example indices are >= 0

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in the order they are served."""
        generator = self._generator()
        permutation = torch.randperm(len(self.lengths), generator=generator)
        # longest first, ties in random order (fairseq's ordered_indices); the last batch holds the shortest
        order = permutation[
            torch.sort(self.lengths[permutation], descending=True, stable=True).indices
        ].tolist()
        batches = self._pack(order)
        if self.shuffle:
            step = self.batches_per_update
            runs = [batches[i : i + step] for i in range(0, len(batches), step)]
            batches = [b for i in torch.randperm(len(runs), generator=generator).tolist() for b in runs[i]]
        return batches

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
        # the sorted sequence of lengths, hence the packing, is the same in every epoch
        return len(self._pack(torch.sort(self.lengths, descending=True, stable=True).indices.tolist()))


def crop_waste(lengths: Sequence[int], crop_to_shortest: bool) -> tuple[int, int]:
    """``(cropped_away, padding)`` samples when a batch of clips of these lengths is cropped to its
    shortest clip or padded to its longest."""
    lengths = list(lengths)
    if not lengths:
        return 0, 0
    if crop_to_shortest:
        return sum(lengths) - len(lengths) * min(lengths), 0
    return 0, len(lengths) * max(lengths) - sum(lengths)


def waste_fraction(content: float, cropped: float, padding: float) -> float:
    """Audio not trained on (cropped away) plus padding, relative to the audio content of the batches."""
    return (cropped + padding) / content if content > 0 else math.nan


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
