"""Flush denormal floats to zero when training on the CPU.

A float32 below 1.2e-38 in magnitude is *denormal*; x86 CPUs handle arithmetic on or producing such
values through a slow microcode path. data2vec 2.0's audio encoder attends with an ALiBi bias, whose
distance penalty makes each query's softmax very peaked: of the 1.9 M attention probabilities of
each block in a base step (16 clones x 12 heads x 100 x 100), about 14 k are denormal, and about 23 k
of their gradients; the matmuls over the probabilities and the backward passes read them. With the
CPU's flush-to-zero and denormals-are-zero modes on (``torch.set_flush_denormal``), a base audio 2.0
step (2 clips of 4 s, 2 cores) took 2-7 % less time, side by side (5 pairs); image and text 2.0
(no ALiBi) were unchanged. Only values below 1.2e-38 in magnitude change: they become zero. GPUs are
not touched (their kernels have their own modes).

The mode is a register of each thread, and ``torch.set_flush_denormal`` sets only the calling thread's:
threads started later inherit it, but torch's OpenMP workers already running (any earlier parallel op
starts them) keep theirs, and half of every elementwise op on 2 cores would still meet denormals.
:func:`flush_denormals` therefore also runs the setting once on every thread of torch's OpenMP team,
through the OpenMP runtime torch loaded (``GOMP_parallel`` of its libgomp, the runtime of torch's Linux
wheels), and then checks a multiply split over all threads.
"""

from __future__ import annotations

import ctypes
import logging

import torch

logger = logging.getLogger(__name__)

SMALLEST_NORMAL = torch.finfo(torch.float32).tiny  # 1.18e-38
_TEAM_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _loaded_libgomp() -> str | None:
    """Path of the GNU OpenMP runtime loaded in this process (Linux), if any."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line}
    except OSError:
        return None
    return min(paths) if paths else None


def _on_every_openmp_thread(function) -> bool:
    """Call ``function()`` once on each thread of torch's OpenMP team (this thread included); False when
    torch's runtime is not libgomp."""
    path = _loaded_libgomp()
    if path is None:
        return False
    try:
        parallel = ctypes.CDLL(path).GOMP_parallel
    except (OSError, AttributeError):
        return False
    parallel.argtypes, parallel.restype = (
        (_TEAM_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint),
        None,
    )
    callback = _TEAM_CALLBACK(lambda _: function())  # kept alive until the call returns
    parallel(callback, None, torch.get_num_threads(), 0)
    return True


def flush_denormals() -> bool:
    """Turn the CPU's flush-to-zero / denormals-are-zero modes on for the rest of the process, on this
    thread and every thread of torch's OpenMP team; returns whether every thread now flushes (False on
    CPUs without the modes, e.g. non-x86)."""
    if not torch.set_flush_denormal(True):
        return False
    if not denormals_flushed():
        _on_every_openmp_thread(lambda: torch.set_flush_denormal(True))
    flushed = denormals_flushed()
    if not flushed:
        logger.warning("denormals are flushed on this thread only: torch's worker threads could not be set")
    return flushed


def denormals_flushed() -> bool:
    """Whether float32 arithmetic on the CPU flushes denormal results to zero on every thread of torch's
    team (checked on a multiply that is split over all of them)."""
    tiny = torch.full((torch.get_num_threads() * 2**16,), SMALLEST_NORMAL)
    return not bool((tiny * 0.5).any())
