"""Batches of a streamed dataset, read by several processes and DataLoader workers, resumable exactly.

The stream is split twice: over the processes by ``datasets.distributed.split_dataset_by_node`` (its own
shards, or every n-th example), then over the DataLoader workers of a process by ``datasets`` itself
(shards ``w, w + W, ...`` for worker ``w`` of ``W``). Every example gets one global index,

    index = (count * W + w) * num_processes + rank        (count: its position in its worker's part),

unique over processes and workers; its random stream (crops, masks) is derived from it. A worker
makes whole batches of its own part, so batch ``j`` of worker ``w`` is this process's batch
``g = j * W + w``, and :func:`in_batch_order` hands them to the loop in the order ``g = 0, 1, 2, ...``
whatever order the DataLoader delivers them in. A resumed run knows only how many batches each process
consumed in the epoch (``B``, the same on every process); from it each worker knows how many of its
batches were consumed (those with ``g < B``), skips their examples and the order goes on at ``g = B``.
The epoch of a process ends at its first missing batch (a worker that ran out), and the epoch of the
run when the first process runs out, so that no process waits for a partner that has no batch.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..collectives import on_every_process

logger = logging.getLogger("data2vec_hf.pretraining")


def batches_of_worker(consumed: int, worker: int, workers: int) -> int:
    """How many of the first ``consumed`` batches of a process came from ``worker`` (batch ``g`` comes
    from worker ``g % workers``)."""
    return max(0, (consumed - worker + workers - 1) // workers)


class WithCounter(IterableDataset):
    """This process's part of the stream, as ``(global index, example)``; in a DataLoader worker,
    ``datasets`` narrows it to the worker's shards. ``skip_batches`` (the batches of this process
    already consumed in the epoch) leaves out each worker's share of them."""

    def __init__(
        self, dataset, num_replicas: int = 1, rank: int = 0, skip_batches: int = 0, batch_size: int = 1
    ):
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.skip_batches, self.batch_size = skip_batches, batch_size

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip = batches_of_worker(self.skip_batches, worker, workers) * self.batch_size
        for count, example in enumerate(self.dataset):
            if count >= skip:
                yield (count * workers + worker) * self.num_replicas + self.rank, example


def batch_number(example_index: int, num_replicas: int, workers: int, batch_size: int) -> int:
    """The position ``g`` in this process's batch order of the batch whose first example has this
    global index (the inverse of :class:`WithCounter`'s numbering)."""
    per_process = example_index // num_replicas
    worker, count = per_process % workers, per_process // workers
    return (count // batch_size) * workers + worker


def in_batch_order(batches, first: int, workers: int, number):
    """Yield ``batches`` (delivered by a DataLoader's workers in any order) in the order ``first,
    first + 1, ...`` of ``number(batch)``, stopping at the first one that never comes.

    Each worker delivers its own batches in order, and the DataLoader takes one from every worker that
    still has one in turn; so once ``workers`` later batches wait, the worker that owes the next one has
    run out. At most ``workers`` batches are held back."""
    expected, waiting = first, {}
    for batch in batches:
        waiting[number(batch)] = batch
        while expected in waiting:
            yield waiting.pop(expected)
            expected += 1
        if len(waiting) >= workers:
            break


class StreamingBatches:
    """This process's batches of a streamed dataset for one epoch (see the module docstring)."""

    def __init__(self, dataset, args, collator, accelerator):
        from datasets.distributed import split_dataset_by_node

        self.accelerator, self.collator, self.args = accelerator, collator, args
        self.batch_size = args.per_device_train_batch_size or 8
        world, rank = accelerator.num_processes, accelerator.process_index
        self.dataset = split_dataset_by_node(dataset, rank=rank, world_size=world) if world > 1 else dataset
        self.workers = stream_workers(self.dataset, args.dataloader_num_workers)

    def epoch(self, epoch: int, skip_batches: int):
        dataset = self.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        loader = DataLoader(
            WithCounter(dataset, world, rank, skip_batches=skip_batches, batch_size=self.batch_size),
            batch_size=self.batch_size,
            collate_fn=self.collator,
            num_workers=self.workers,
            generator=torch.Generator().manual_seed(self.args.seed),  # not the global RNG
        )
        workers = max(self.workers, 1)

        def number(batch) -> int:
            return batch_number(int(batch["example_index"][0]), world, workers, self.batch_size)

        return self.synchronized(in_batch_order(iter(loader), skip_batches, workers, number))

    def synchronized(self, batches):
        """Stop every process as soon as one has no batch left (one all-reduce per batch)."""
        while True:
            batch = next(batches, None)
            if not on_every_process(self.accelerator, batch is not None):
                return
            yield batch


def stream_workers(dataset, requested: int) -> int:
    """DataLoader workers for this process's part of a stream: ``datasets`` gives every worker whole
    shards, so workers beyond the part's shard count would read nothing (and end the epoch at once)."""
    shards = getattr(dataset, "num_shards", 1) or 1
    if requested > shards:
        logger.info(
            "--dataloader_num_workers %d lowered to %d: this process's part of the stream has %d shard(s), "
            "and a streaming worker reads whole shards (split the data into more files for more workers)",
            requested,
            shards,
            shards,
        )
        return shards
    return requested
