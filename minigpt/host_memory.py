"""Host memory: glibc's malloc told to keep the memory a training step frees, for the next step.

A training step allocates and frees the same large NumPy arrays every time
(GPT-2's (T, vocabulary) logits are 206 MB at T = 1024); memory given back to
the OS must be page-faulted in again at the next step, which costs a sixth of
a GPT-2 step on a VM whose host reclaims freed pages (scripts/bench/HISTORY.md).
"""


def tune_host_allocator() -> None:
    """Ask glibc's malloc, for the whole process, to keep every freed block for reuse instead of returning it to the OS.

    Training calls this once at its start, as the benchmarks do. By glibc's mallopt:

        M_MMAP_MAX = 0        no block gets its own mmap, which free() would unmap:
                              every block, however large, comes from the heap
        M_ARENA_MAX = 1       worker threads share that heap (their own arenas
                              would still mmap blocks beyond 64 MiB)
        M_TRIM_THRESHOLD = -1 the heap is never trimmed: freed memory stays
                              in the process for the next step
        M_TOP_PAD = 64 MiB    the heap grows 64 MiB at a time

    The process keeps its peak memory for its whole life, which a training
    run reaches again at every step anyway. Not glibc (macOS, musl): nothing
    to do. Calling it again changes nothing.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8  # from glibc's malloc.h
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_ARENA_MAX, 1)
        libc.mallopt(M_TRIM_THRESHOLD, -1)
        libc.mallopt(M_TOP_PAD, 64 << 20)
    except (OSError, AttributeError):
        pass


def release_free_memory() -> None:
    """Give the heap's free pages back to the OS once (glibc's malloc_trim(0)), e.g. after setting up.

    tune_host_allocator keeps freed memory for the next step; memory freed once
    while setting up is never asked for again: the weights as loaded, freed when
    the optimizer packs them into its flat buffer (minigpt.optim), would stay
    resident, one more copy of the parameters at the peak. Not glibc: nothing to do.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
