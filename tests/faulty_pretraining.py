"""``pretrain_audio.py`` with one fault injected on one process, for the multi-process fault tests.

Run it as the pretraining script (``accelerate launch tests/faulty_pretraining.py [flags]``); the fault
comes from the environment:

- ``FAULT=nonfinite:R:U1,U2``: on process ``R``, the micro-batches of updates ``U1, U2`` (counted from 1)
  get a NaN sample, so their loss is non-finite on that process only;
- ``FAULT=enospc:R:S``: on process ``R``, the ``S``-th checkpoint save fails with "No space left on
  device" (errno ENOSPC), as a full disk would make it fail;
- every process writes its pid to ``<output_dir>/.pid-<rank>`` first (for ``kill`` from a test).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
from pathlib import Path

from data2vec_hf.pretraining import pretrain_audio
from data2vec_hf.pretraining.parallel import Replicated
from data2vec_hf.pretraining.trainer import run


def main(argv: list[str]) -> int:
    rank = int(os.environ.get("RANK", "0"))
    output_dir = Path(argv[argv.index("--output_dir") + 1])
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f".pid-{rank}").write_text(str(os.getpid()))
    kind, faulty_rank, when = (os.environ.get("FAULT", "none::") + "::").split(":")[:3]
    spec = pretrain_audio.SPEC
    if kind == "nonfinite" and int(faulty_rank) == rank:
        spec = poison_updates(spec, {int(u) for u in when.split(",")}, argv)
    if kind == "enospc" and int(faulty_rank) == rank:
        fail_save(int(when))
    return run(spec, argv)


def poison_updates(spec, updates: set[int], argv: list[str]):
    """A spec whose collator puts a NaN into the first sample of the micro-batches of ``updates``."""
    accumulation = (
        int(argv[argv.index("--gradient_accumulation_steps") + 1])
        if "--gradient_accumulation_steps" in argv
        else 1
    )

    def build_data(args, config, accelerator):
        dataset, collate, processor = spec.build_data(args, config, accelerator)
        calls = [0]

        def poisoned(examples, generators):
            batch = collate(examples, generators)
            calls[0] += 1
            if (calls[0] - 1) // accumulation + 1 in updates:
                batch["input_values"][0] = float("nan")
            return batch

        return dataset, poisoned, processor

    return dataclasses.replace(spec, build_data=build_data)


def fail_save(which: int) -> None:
    """Make the ``which``-th checkpoint save of this process raise ENOSPC."""
    original, saves = Replicated.save, [0]

    def save(self, folder):
        saves[0] += 1
        if saves[0] == which:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / "random_states_1.pkl"))
        return original(self, folder)

    Replicated.save = save


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
