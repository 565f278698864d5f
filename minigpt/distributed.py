"""Many processes training one model: the communicator that every rank talks through.

    mpiexec -n 4 python scripts/train.py ...                 # 4 ranks on the CPU (MPI, via mpi4py)
    mpiexec -n 8 python scripts/train.py --device gpu ...    # 8 GPUs, rank r on local GPU r (NCCL, via CuPy)
    srun --gpus-per-task=1 --mpi=pmi2 -n 8 python ...        # each rank sees one GPU: it takes that one

(docs/gpu-launchers.md: the launchers considered, and how each rank finds its GPU)

Each rank is one process with the whole model. Every optimizer step, each rank
computes the gradients of its share of the global batch (minigpt.parallel), and
one collective over a flat buffer sums them; every rank then applies the same
update (or, with ZeRO-1, its shard of it). The collectives are MPI's on the
CPU (mpi4py, numpy buffers) and NCCL's on GPUs (cupy.cuda.nccl; MPI only
starts the processes and hands NCCL its unique id).

`communicator(device)` picks one: a launcher (mpiexec, srun) sets PMI_SIZE or
OMPI_COMM_WORLD_SIZE; without one, or with one rank, it is `SingleProcess`,
which needs neither mpi4py nor an MPI, and every collective is a copy or
nothing. Only the main thread of each rank calls the communicator.

Errors: an error on one rank must end every rank, or the others wait forever
in their next collective. `run_cli` prints one line and ends the job (MPI_Abort).
"""

import os
import sys
import time
from contextlib import contextmanager

import numpy as np

from minigpt.backend import cupy_without_probe
from minigpt.errors import MinigptError, run_cli as run_cli_one_process

# Launchers' variables for the number of processes and this one's rank: MPICH's Hydra and Intel MPI (PMI_*),
# Open MPI (OMPI_COMM_WORLD_*), MVAPICH (MV2_COMM_WORLD_*); srun --mpi=pmi2 sets PMI_* as well.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
ABORT_DELAY_S = 0.3  # seconds between printing the error line and MPI_Abort (see MPICommunicator.abort)
ERROR_GRACE_S = 2.0  # how long a rank other than 0 waits for rank 0 to report the same user error


def _launched(variables) -> int | None:
    for name in variables:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def launched_world_size() -> int:
    """The number of ranks a launcher started (1 for a plain `python ...`)."""
    return _launched(SIZE_VARIABLES) or 1


def launched_rank() -> int:
    return _launched(RANK_VARIABLES) or 0


class Communicator:
    """What a rank needs from the others. Buffers are 1-D and contiguous, on the model's device.

    all_reduce(buf):            buf = sum over ranks of buf, in place
    reduce_scatter(buf, out):   buf (world_size * n,), out (n,): rank r gets the sum of every rank's buf[r*n:(r+1)*n]
    all_gather(shard, out):     shard (n,), out (world_size * n,): out[r*n:(r+1)*n] = rank r's shard
    sum_host(values):           a small host array summed over ranks (counts, evaluation losses, flags)
    broadcast(obj):             rank 0's small Python object on every rank (set-up only, never per step)
    """

    rank = 0
    world_size = 1
    local_rank = 0  # rank among the processes on this machine
    local_size = 1

    def all_reduce(self, buf) -> None:
        raise NotImplementedError

    def reduce_scatter(self, buf, out) -> None:
        raise NotImplementedError

    def all_gather(self, shard, out) -> None:
        raise NotImplementedError

    def sum_host(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def broadcast(self, obj):
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def abort(self, code: int) -> None:
        """End every rank now, with exit status `code` (after flushing this rank's output)."""
        raise NotImplementedError

    @contextmanager
    def local_first(self):
        """Rank 0 of each machine runs the block first, the others after it: one process per machine
        writes data/ and checkpoints/ (tokenizing, downloading), the rest reuse what it wrote."""
        if self.local_rank != 0:
            self.barrier()
        yield
        if self.local_rank == 0:
            self.barrier()

    def describe(self) -> str:
        return f"{self.world_size} ranks ({type(self).__name__})"


class SingleProcess(Communicator):
    """A world of one: every collective is a copy or nothing."""

    def all_reduce(self, buf) -> None:
        pass

    def reduce_scatter(self, buf, out) -> None:
        out[...] = buf[: out.size]

    def all_gather(self, shard, out) -> None:
        out[...] = shard

    def sum_host(self, values):
        return np.asarray(values)

    def broadcast(self, obj):
        return obj

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def describe(self) -> str:
        return "1 process"


class MPICommunicator(Communicator):
    """MPI over mpi4py on host (numpy) buffers: Allreduce, Reduce_scatter_block, Allgather, never pickles per step."""

    def __init__(self):
        try:
            import mpi4py

            mpi4py.rc.thread_level = "funneled"  # only the main thread calls MPI; worker threads never do
            from mpi4py import MPI
        except ImportError:
            raise MinigptError(
                "this process was started by mpiexec but mpi4py is not installed: pip install -e '.[mpi]' "
                "(mpi4py and an MPI), or run without mpiexec"
            ) from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks that share this machine
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    def all_reduce(self, buf) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def reduce_scatter(self, buf, out) -> None:
        self.comm.Reduce_scatter_block(buf, out, op=self.MPI.SUM)

    def all_gather(self, shard, out) -> None:
        self.comm.Allgather(shard, out)

    def sum_host(self, values):
        values = np.array(values, dtype=np.float64)  # a copy: the caller's array is left as it was
        self.comm.Allreduce(self.MPI.IN_PLACE, values, op=self.MPI.SUM)
        return values

    def broadcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # The launcher forwards each rank's stderr from a pipe and may stop reading it once the job aborts: give it
        # a moment to pass on the line just printed (CI once got an empty stderr from a bad option on 2 ranks).
        time.sleep(ABORT_DELAY_S)
        # MPICH prints its own "Abort(code) on node ..." line: the one line already printed says it all
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        self.comm.Abort(code)


class NCCLCommunicator(Communicator):
    """NCCL over cupy.cuda.nccl on device buffers; host-side calls (sums of counts, set-up) go over MPI.

    Each rank uses its own GPU (`use_local_gpu`, before any kernel runs or any
    device memory is allocated). The collectives are queued on CuPy's current
    stream, like the kernels around them: no host synchronisation.
    """

    def __init__(self, host: Communicator):
        cupy = use_local_gpu(host)
        from cupy.cuda import nccl

        self.host, self.nccl, self.cupy = host, nccl, cupy
        self.rank, self.world_size = host.rank, host.world_size
        self.local_rank, self.local_size = host.local_rank, host.local_size
        uid = host.broadcast(nccl.get_unique_id() if self.rank == 0 else None)
        self.comm = nccl.NcclCommunicator(self.world_size, uid, self.rank)
        self._dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def all_reduce(self, buf) -> None:
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._dtypes[buf.dtype], self.nccl.NCCL_SUM,
                            self._stream())

    def reduce_scatter(self, buf, out) -> None:
        self.comm.reduceScatter(buf.data.ptr, out.data.ptr, out.size, self._dtypes[buf.dtype], self.nccl.NCCL_SUM,
                                self._stream())

    def all_gather(self, shard, out) -> None:
        self.comm.allGather(shard.data.ptr, out.data.ptr, shard.size, self._dtypes[shard.dtype], self._stream())

    def sum_host(self, values):
        return self.host.sum_host(values)

    def broadcast(self, obj):
        return self.host.broadcast(obj)

    def barrier(self) -> None:
        self.host.barrier()

    def abort(self, code: int) -> None:
        self.host.abort(code)

    def describe(self) -> str:
        return f"{self.world_size} ranks (NCCL)"


def local_gpu(local_rank: int, local_size: int, visible: int, visible_list: str | None = None) -> int:
    """The index, among the `visible` GPUs this rank sees, of the one it uses.

    Two ways a launcher places ranks on a machine's GPUs:
    * every rank sees all of them (mpiexec, srun without GPU binding): rank r
      of the machine takes GPU r, so `visible` must be at least `local_size`;
    * each rank sees only its own (srun --gpus-per-task=1, a wrapper setting
      CUDA_VISIBLE_DEVICES per rank): it takes GPU 0, the one it sees.
    Anything else (two ranks on one GPU, 4 ranks seeing 2 GPUs each) is a user error.
    `visible_list` is CUDA_VISIBLE_DEVICES (None when unset).
    """
    if visible >= local_size:
        return local_rank
    if visible == 1 and visible_list:  # the launcher gave this rank its own GPU
        return 0
    shared = " (all share it: set CUDA_VISIBLE_DEVICES per rank, or srun --gpus-per-task=1)" if visible == 1 else ""
    raise MinigptError(f"{local_size} ranks on this machine but this rank sees only {visible} GPU"
                       f"{'s' if visible != 1 else ''}{shared}: start at most one rank per GPU")


def use_local_gpu(host: Communicator):
    """Make this rank's own GPU CuPy's current device, before anything touches a GPU; returns cupy.

    Called first thing for --device gpu under a launcher: backend's probe kernel,
    the NCCL communicator and every array then live on that GPU, and GPU 0 does
    not collect a CUDA context from every rank (under EXCLUSIVE_PROCESS compute
    mode, ranks 1..N-1 would fail there).
    """
    cupy = cupy_without_probe()  # counting devices creates no context
    visible = cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(local_gpu(host.local_rank, host.local_size, visible,
                               os.environ.get("CUDA_VISIBLE_DEVICES"))).use()
    return cupy


_WORLD = None


def world() -> Communicator:
    """This process's host communicator, made once: MPI under a launcher with N > 1 ranks, else SingleProcess."""
    global _WORLD
    if _WORLD is None:
        _WORLD = MPICommunicator() if launched_world_size() > 1 else SingleProcess()
    return _WORLD


def communicator(device: str = "cpu") -> Communicator:
    """The communicator for gradients on `device`: MPI's (or none) on the CPU, NCCL's between GPUs."""
    host = world()
    if device == "gpu" and host.world_size > 1:
        return NCCLCommunicator(host)
    return host


def cores_per_rank() -> int:
    """The CPU cores this rank may use: the machine's (or this process's affinity) shared by its local ranks."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local = world().local_size if launched_world_size() > 1 else 1
    return max(1, cores // local)


def run_cli(main, argv=None):
    """errors.run_cli for a script that may be one of N ranks: one line for an error, and every rank ends.

    One process: errors.run_cli. N ranks: rank 0's stdout is the run's output
    (the others' goes to /dev/null). A MinigptError (a bad option, a missing
    file) happens on every rank alike, so rank 0 reports it; another rank that
    meets one alone reports it after a short grace. Any other exception is
    reported with its rank. Either way the job is then aborted, so no rank waits
    forever in a collective. A normal return (0, or 130 after Ctrl-C) waits for
    every rank, so none is cut short while rank 0 writes a checkpoint.
    """
    if launched_world_size() == 1:
        return run_cli_one_process(main, argv)
    rank = launched_rank()
    if rank != 0:
        sys.stdout = open(os.devnull, "w")
    try:
        comm = world()
        code = main(argv)
    except MinigptError as err:
        if rank != 0:
            time.sleep(ERROR_GRACE_S)  # rank 0 meeting the same error ends the job first
        print(f"error: {err}" + (f" (rank {rank})" if rank else ""), file=sys.stderr)
        _abort(2)
    except BaseException as err:  # noqa: BLE001 -- any failure must end every rank, not leave them waiting
        print(f"error on rank {rank}: {type(err).__name__}: {err}", file=sys.stderr)
        _abort(1)
    comm.barrier()  # e.g. after Ctrl-C (130): no rank exits while rank 0 still writes its checkpoint
    return code


def _abort(code: int) -> None:
    """Abort the job through MPI when it could be started, else just this process (its launcher ends the rest)."""
    comm = _WORLD if _WORLD is not None else SingleProcess()
    comm.abort(code)
