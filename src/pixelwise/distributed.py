"""Data-parallel training over several processes (``torchrun``), and sharding of work.

``torchrun --nproc_per_node=N -m pixelwise train ...`` starts N copies of the command with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in their environment; :func:`init` reads them, joins
the process group (NCCL on CUDA, gloo on the CPU) and picks this process's device. Without those
variables (or with ``WORLD_SIZE=1``) everything here is a no-op and training runs in one process.

The data order is a pure function of ``(seed, epoch)``: :class:`EpochSampler` draws one global
permutation per epoch and gives rank ``r`` of ``W`` the ``r``-th slice of every global batch, so
the union of the per-rank batches is exactly the batch one process would train on.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from pixelwise.errors import ConfigError

__all__ = [
    "DistInfo",
    "EpochSampler",
    "all_reduce_sum",
    "any_true",
    "barrier",
    "destroy",
    "env_info",
    "gather_tensors",
    "init",
    "is_main",
    "mix_seed",
    "parse_shard",
    "shard_range",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r}: expected an integer") from None


def env_info() -> DistInfo:
    """Rank, world size and local rank from ``torchrun``'s environment (defaults: one process)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(
            f"environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} are inconsistent; "
            "start several processes with torchrun"
        )
    return DistInfo(rank, world, local)


def _current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_info().local_rank)
    return DistInfo()


def is_main() -> bool:
    """True in a single process and on rank 0 of a process group."""
    return _current().is_main


def init(device: str | torch.device = "auto") -> tuple[DistInfo, torch.device, bool]:
    """Join the process group ``torchrun`` describes and choose this process's device.

    Returns ``(info, device, created)``; ``created`` is True when this call initialised the
    process group (pass it to :func:`destroy`). ``device`` ``auto``/``cuda`` become
    ``cuda:LOCAL_RANK`` when CUDA is there; NCCL is used on CUDA, gloo on the CPU.
    """
    info = env_info()
    want = str(device)
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(want)
    if not info.enabled:
        return info, dev, False
    if not dist.is_available():
        raise ConfigError("torchrun: this PyTorch build has no torch.distributed support")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available; use --device cpu")
        if torch.cuda.device_count() <= info.local_rank:
            raise ConfigError(
                f"torchrun: LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} "
                "GPU(s); lower --nproc_per_node"
            )
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        created = True
    if dist.get_world_size() != info.world_size:
        raise ConfigError(
            f"torchrun: WORLD_SIZE={info.world_size} but the process group has "
            f"{dist.get_world_size()} processes"
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank), dev, created


def destroy(created: bool) -> None:
    """Leave the process group if :func:`init` created it."""
    if created and dist.is_available() and dist.is_initialized():
        # the DDP wrapper and its reducer may sit in reference cycles; collect them while the
        # group and the interpreter are alive, not at exit, where a gloo thread still holding
        # Python objects aborts the process ("terminate called without an active exception")
        gc.collect()
        # every rank reaches this point before any tears gloo down: a rank leaving while
        # another still has collectives in flight can abort the process at exit
        with contextlib.suppress(RuntimeError):  # a peer already died: nothing to wait for
            dist.barrier()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over every process, in place (no-op in one process); returns ``t``."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True if ``flag`` is true in any process (a collective: every process must call it)."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if _active():
        dist.barrier()


def gather_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``t`` (same shape and dtype everywhere), in rank order; ``[t]`` alone."""
    if not _active():
        return [t]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out


def mix_seed(*values: int) -> int:
    """A 63-bit seed derived from ``values`` (e.g. ``(seed, epoch)``), well mixed."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2)
    return (int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1)


class EpochSampler(Sampler[int]):
    """Shuffled indices whose order is a pure function of ``(seed, epoch)``, split over ranks.

    Epoch ``e`` uses the permutation ``torch.randperm(n)`` of a generator seeded from
    ``(seed, e)``. Global batch ``k`` is ``perm[k*B:(k+1)*B]`` (``B`` = ``batch_size``, the global
    batch); rank ``r`` of ``W`` yields its slice ``perm[k*B + r*b : k*B + (r+1)*b]`` with
    ``b = B / W``, so a DataLoader with ``batch_size=b`` on each rank trains on exactly the
    global batches of one process. With several ranks the last incomplete batch is dropped.
    :meth:`set_epoch` takes ``start_batch`` to skip the batches a resumed epoch already did.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_size % world_size:
            raise ConfigError(
                f"--batch-size {batch_size}: must be divisible by the {world_size} processes "
                "(it is the global batch, split evenly over them)"
            )
        if world_size > 1 and n < batch_size:
            raise ConfigError(
                f"--batch-size {batch_size}: larger than the {n} training images; "
                "lower it or use fewer processes"
            )
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last = bool(drop_last) or world_size > 1
        self.epoch, self.start_batch = 0, 0

    @property
    def local_batch_size(self) -> int:
        """Samples per batch on this rank."""
        return self.batch_size // self.world_size

    @property
    def num_batches(self) -> int:
        """Global batches per epoch (all of them, skipped ones included)."""
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use epoch ``epoch``'s permutation, starting at batch ``start_batch``."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start batch {start_batch} outside 0..{self.num_batches}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The global order of epoch ``epoch``: int64 ``(n,)``."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        perm = self.permutation(self.epoch).tolist()
        big, small = self.batch_size, self.local_batch_size
        for k in range(self.start_batch, self.num_batches):
            lo = k * big + self.rank * small
            yield from perm[lo : min(lo + small, self.n, (k + 1) * big)]

    def __len__(self) -> int:
        size = self.n if not self.drop_last else self.num_batches * self.batch_size
        done = self.start_batch * self.batch_size
        return max(0, min(size, self.n) - done) // self.world_size


def shard_range(n: int, rank: int, world_size: int) -> range:
    """A contiguous block of ``range(n)`` for ``rank``: sizes differ by at most one, rank 0's
    block starts at 0 (so it sees the same first items as a single process)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; anything else is a ConfigError."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    return i, n
