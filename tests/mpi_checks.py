"""Checks that run inside `mpiexec -n 2 python tests/mpi_checks.py CHECK` (tests/test_distributed.py starts them).

    collectives   all_reduce, reduce_scatter, all_gather, sum_host, broadcast against their definitions;
                  the gradients summed over the ranks equal one process's (float64, 1e-10, with dropout)
    zero          the flat-buffer AdamW sharded over the ranks (ZeRO-1) equals AdamW + clipping in one process
                  (float64, 1e-10, several steps), and its state_dict gathers the whole state
    crash         rank 1 raises while rank 0 waits in a collective: the job must end, with one line
    gpu_devices CORPUS OUT all|own
                  train.py --device gpu on 2 ranks under the strict CuPy stand-in, each rank seeing both GPUs
                  (all) or only its own (own): each touches its own GPU only
Each rank prints "ok" when all its assertions held.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minigpt.distributed import SingleProcess, run_cli, world  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402
from minigpt.parallel import DataParallel  # noqa: E402


def check_collectives():
    comm = world()
    R, r = comm.world_size, comm.rank
    assert R == 2 and comm.local_size == 2
    n = 5
    buf = np.arange(R * n, dtype=np.float64) * (r + 1)  # rank r holds (r + 1) * [0, 1, ...]
    total = np.arange(R * n, dtype=np.float64) * sum(q + 1 for q in range(R))
    reduced = buf.copy()
    comm.all_reduce(reduced)
    np.testing.assert_array_equal(reduced, total)
    shard = np.empty(n)
    comm.reduce_scatter(buf, shard)
    np.testing.assert_array_equal(shard, total[r * n:(r + 1) * n])
    gathered = np.empty(R * n)
    comm.all_gather(np.full(n, float(r)), gathered)
    np.testing.assert_array_equal(gathered, np.repeat(np.arange(R, dtype=np.float64), n))
    np.testing.assert_array_equal(comm.sum_host([1.0, r]), [R, sum(range(R))])
    assert comm.broadcast({"rank": r}) == {"rank": 0}


def check_gradients():
    """A step of 3 micro-batches of 3 rows, dropout on, ignored targets: 2 ranks x 1 or 2 threads == 1 process."""
    comm = world()
    config = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11, dropout=0.2)
    rng = np.random.default_rng(3)
    idx, targets = rng.integers(0, 11, (3, 3, 8)), rng.integers(0, 11, (3, 3, 8))
    targets[1, 2, :4] = -1
    model = GPT(config, dtype="float64", seed=0)
    one = DataParallel(model, 1, SingleProcess())
    loss, grads = one.forward_backward(idx, targets, dropout_key=(1337, 4))
    grads = {k: g.copy() for k, g in grads.items()}
    for workers in (1, 2):
        parallel = DataParallel(model, workers, comm)
        ranks_loss, mine = parallel.forward_backward(idx, targets, dropout_key=(1337, 4))
        flat = np.concatenate([g.ravel() for g in mine.values()])
        comm.all_reduce(flat)  # what the optimizer's one collective does
        assert abs(float(ranks_loss) - float(loss)) <= 1e-12 * abs(float(loss))
        at = 0
        for name, g in grads.items():
            np.testing.assert_allclose(flat[at:at + g.size].reshape(g.shape), g, rtol=1e-10, atol=1e-15, err_msg=name)
            at += g.size
        parallel.close()


def check_zero():
    from minigpt.optim import AdamW, FlatAdamW, clip_grad_norm

    comm = world()
    config = GPTConfig(n_layer=1, n_head=2, n_embd=6, block_size=5, vocab_size=7)  # 269 parameters: not divisible by 2
    ours, reference = (GPT(config, dtype="float64", seed=0) for _ in range(2))
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    flat = FlatAdamW(ours.params, **hyper, comm=comm, zero=True)
    adamw = AdamW(reference.params, **hyper)
    rng = np.random.default_rng(5)
    for step in range(3):
        grads = {k: rng.standard_normal(p.shape) for k, p in reference.params.items()}  # the same on every rank
        share = (comm.rank + 1) / sum(range(1, comm.world_size + 1))  # rank r's share: the shares sum to 1
        norm = flat.step({k: g * share for k, g in grads.items()}, lr=1e-2, grad_clip=1.0)
        expected = clip_grad_norm(grads, 1.0)
        adamw.step(grads, lr=1e-2)
        assert abs(float(norm) - float(expected)) <= 1e-10 * float(expected)
    for name, p in reference.params.items():
        np.testing.assert_allclose(ours.params[name], p, rtol=1e-10, atol=1e-14, err_msg=name)
    tensors, metadata = flat.state_dict()  # a collective: every rank calls it
    expected_tensors, expected_metadata = adamw.state_dict()
    assert metadata["step"] == expected_metadata["step"] == "3"
    for key, value in expected_tensors.items():
        np.testing.assert_allclose(tensors[key], value, rtol=1e-10, atol=1e-14, err_msg=key)


def check_gpu_devices(corpus, out_dir, visible):
    """A 2-rank `train.py --device gpu` under the strict stand-in (2 GPUs each, or 1 of its own): each rank's
    arrays and kernels, the probe's first, are on its own GPU only. MPI is real, NCCL a fake that adds nothing
    (so the losses are each rank's own: 2 evaluation batches, one per rank, keep them finite)."""
    import os

    from minigpt.trainer import main as train
    from tests import device_standin

    comm = world()
    own = {"all": comm.local_rank, "own": 0}[visible]
    if visible == "own":
        os.environ["CUDA_VISIBLE_DEVICES"] = str(comm.local_rank)  # what srun --gpus-per-task=1 sets
    with device_standin.installed(devices=2 if visible == "all" else 1):
        code = train(["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "8", "--batch_size", "4",
                      "--max_iters", "2", "--eval_interval", "100", "--eval_iters", "2", "--sample_tokens", "4",
                      "--dropout", "0.1", "--data", corpus, "--device", "gpu", "--out_dir", out_dir])
        assert code == 0
        on = dict(device_standin.ON_DEVICE)
    assert set(on) == {own}, f"rank {comm.rank} worked on devices {on}, not only on {own}"


def main(argv):
    if argv[0] == "gpu_devices":
        check_gpu_devices(*argv[1:])
        print("own GPU only: ok", file=sys.stderr)
    elif argv[0] == "collectives":
        check_collectives()
        check_gradients()
        print("ok", file=sys.stderr)
    elif argv[0] == "zero":
        check_zero()
        print("ok", file=sys.stderr)
    elif argv[0] == "crash":
        if world().rank == 1:
            raise RuntimeError("boom")
        world().sum_host([0.0])  # rank 1 never comes: only the abort ends this rank
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
