"""A training data stream that ``--resume`` continues exactly where the interrupted run was.

detectron2's ``TrainingSampler`` starts its shuffled index stream from the beginning every time
the loader is built, and the augmentations (resize choice, flip) draw from the global numpy RNG.
A resumed run therefore sees other images, with other flips, than the uninterrupted run would
have seen: the final weights differ. Here every sample is a pure function of ``(seed, position
in the stream)``:

* :class:`StreamOrder`: position ``g`` -> dataset index; epoch ``e = g // N`` is a permutation
  seeded by ``seed + e``;
* :class:`ResumableTrainingSampler`: yields the positions of this rank (``g = p * world +
  rank``, as ``TrainingSampler`` shards), starting at the stream state after ``start_iter``
  batches. With aspect-ratio grouping the state includes the images waiting in the two
  buckets; they are replayed first, in their order, which rebuilds the buckets exactly;
* :class:`PositionSeededMapper`: seeds numpy / ``random`` from ``(seed, g)`` around each call,
  so augmentations depend on the position only;
* :class:`ResumableTrainLoader`: builds the detectron2 loader at its first ``next()``, at the
  iteration the trainer is at then (``EventStorage.iter``), and keeps the trainer's own RNG
  states untouched by data loading.

The state to resume is the iteration number the checkpoint already holds: nothing else is saved.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetFromList, build_detection_train_loader
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch.utils.data import Dataset, Sampler

from ..preemption import blocked_for_new_processes

logger = logging.getLogger(__name__)

__all__ = [
    "StreamOrder",
    "ResumableTrainingSampler",
    "PositionSeededMapper",
    "ResumableTrainLoader",
    "build_resumable_train_loader",
    "resumable_train_loader",
]

_POSITION_KEY = "_r2ios_stream_position"


def _mix(seed: int, *values: int) -> int:
    """A 32-bit seed from ints (numpy's SeedSequence hashing: nearby inputs decorrelate)."""
    return int(np.random.SeedSequence([seed % 2**32, *values]).generate_state(1)[0])


class StreamOrder:
    """Position in the infinite training stream -> dataset index.

    Args:
        size: number of dataset dicts N.
        seed: the stream's seed.
        shuffle: a new permutation of range(N) per epoch (else range(N) repeated).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        if size <= 0:
            raise ValueError("the training dataset is empty")
        self.size, self.seed, self.shuffle = int(size), int(seed), shuffle
        self._epoch, self._perm = -1, None

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.size)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_mix(self.seed, epoch))
            self._perm = torch.randperm(self.size, generator=g).tolist()
            self._epoch = epoch
        return self._perm[offset]


class ResumableTrainingSampler(Sampler):
    """Infinite stream of global positions for this rank, resumable at any iteration.

    Args:
        order: the stream's :class:`StreamOrder`.
        landscape: per dataset dict, whether it is wider than high (the bucket detectron2's
            aspect-ratio grouping puts it in); None when grouping is off.
        batch_size: images per batch on this rank.
        start_iter: number of batches this rank has already consumed.
        rank, world_size: default: detectron2's ``comm``.
    """

    def __init__(
        self,
        order: StreamOrder,
        landscape: Optional[Sequence[bool]],
        batch_size: int,
        start_iter: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        self.order = order
        self.landscape = landscape
        self.batch_size = int(batch_size)
        self.start_iter = int(start_iter)
        self.rank = comm.get_rank() if rank is None else rank
        self.world_size = comm.get_world_size() if world_size is None else world_size

    def _global(self, p: int) -> int:
        return p * self.world_size + self.rank

    def resume_state(self) -> Tuple[List[int], int]:
        """Replay ``start_iter`` batches of the grouping (cheap: no image is read).

        Returns:
            the global positions waiting in the buckets (in arrival order) and the next
            per-rank position of the stream.
        """
        buckets: List[List[int]] = [[], []]
        p, done = 0, 0
        while done < self.start_iter:
            g = self._global(p)
            b = 0 if self.landscape is None or self.landscape[self.order.index(g)] else 1
            buckets[b].append(g)
            if len(buckets[b]) == self.batch_size:
                buckets[b].clear()
                done += 1
            p += 1
        waiting = sorted(buckets[0] + buckets[1])  # arrival order = position order
        return waiting, p

    def __iter__(self) -> Iterator[int]:
        waiting, p = self.resume_state()
        yield from waiting
        while True:
            yield self._global(p)
            p += 1


class _PositionedDicts(Dataset):
    """Map-style dataset over stream positions: ``ds[g]`` = the dict at position g + g."""

    def __init__(self, dicts: List[Dict[str, Any]], order: StreamOrder) -> None:
        self._dicts = DatasetFromList(dicts, copy=False)
        self._order = order

    def __len__(self) -> int:
        return len(self._dicts)

    def __getitem__(self, position: int) -> Dict[str, Any]:
        d = dict(self._dicts[self._order.index(position)])
        d[_POSITION_KEY] = int(position)
        return d


class PositionSeededMapper:
    """Calls ``mapper`` with numpy's and ``random``'s global RNGs seeded from the position.

    The global states are restored afterwards, so mapping never moves the caller's RNGs.
    """

    def __init__(self, mapper: Callable[[Dict[str, Any]], Any], seed: int) -> None:
        self.mapper, self.seed = mapper, int(seed)

    def __call__(self, dataset_dict: Dict[str, Any]) -> Any:
        d = dict(dataset_dict)
        position = d.pop(_POSITION_KEY, None)
        if position is None:
            return self.mapper(d)
        np_state, py_state = np.random.get_state(), random.getstate()
        s = _mix(self.seed, position)
        np.random.seed(s)
        random.seed(s)
        try:
            return self.mapper(d)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class _DeferredIterator:
    def __init__(self, loader: ResumableTrainLoader) -> None:
        self._loader = loader
        self._it: Optional[Iterator[Any]] = None

    def __iter__(self) -> _DeferredIterator:
        return self

    def __next__(self) -> Any:
        # torch's DataLoader draws its base seed from the global torch RNG and the mapper may
        # draw too: fork the RNGs so that the training step's randomness is the trainer's only.
        with torch.random.fork_rng(devices=[]):
            py_state = random.getstate()
            try:
                if self._it is None:
                    # The workers start now: with the stop signals blocked, they leave a
                    # preemption to the main process (see r2ios_d2.preemption).
                    with blocked_for_new_processes():
                        self._it = iter(self._loader.build())
                        return next(self._it)
                return next(self._it)
            finally:
                random.setstate(py_state)


class ResumableTrainLoader:
    """An iterable that builds the real loader lazily, at the iteration training resumes at.

    Args:
        build_fn: ``build_fn(start_iter)`` returns a detectron2 train loader whose stream starts
            after ``start_iter`` batches.
    """

    def __init__(self, build_fn: Callable[[int], Any]) -> None:
        self._build_fn = build_fn
        self.start_iter: Optional[int] = None

    def build(self) -> Any:
        if self.start_iter is None:
            try:
                self.start_iter = int(get_event_storage().iter)
            except AssertionError:  # used outside a trainer
                self.start_iter = 0
        if self.start_iter:
            logger.info("Training data stream resumes after %d batches", self.start_iter)
        return self._build_fn(self.start_iter)

    def __iter__(self) -> Iterator[Any]:
        return _DeferredIterator(self)


def build_resumable_train_loader(
    cfg: CfgNode,
    dicts: List[Dict[str, Any]],
    mapper: Callable[[Dict[str, Any]], Any],
    seed: Optional[int] = None,
) -> ResumableTrainLoader:
    """detectron2's train loader over ``dicts`` with the resumable stream, set up from a yacs
    config (:func:`resumable_train_loader` with ``SOLVER.IMS_PER_BATCH``,
    ``DATALOADER.ASPECT_RATIO_GROUPING`` / ``NUM_WORKERS`` and ``SEED``).

    Args:
        cfg: the config.
        dicts: the training dataset dicts (proposals attached, filtered), e.g.
            :func:`r2ios_d2.data.r2ios_train_dataset_dicts`.
        mapper: the dataset mapper (e.g. ``PrecomputedProposalMapper(cfg, True)``).
        seed: stream seed; default ``cfg.SEED``.
    """
    return resumable_train_loader(
        dicts,
        mapper,
        total_batch_size=int(cfg.SOLVER.IMS_PER_BATCH),
        seed=cfg.SEED if seed is None else seed,
        aspect_ratio_grouping=bool(cfg.DATALOADER.ASPECT_RATIO_GROUPING),
        num_workers=int(cfg.DATALOADER.NUM_WORKERS),
    )


def resumable_train_loader(
    dataset: List[Dict[str, Any]],
    mapper: Callable[[Dict[str, Any]], Any],
    *,
    total_batch_size: int,
    seed: int = -1,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
) -> ResumableTrainLoader:
    """detectron2's train loader over ``dataset`` in a stream that ``--resume`` continues
    exactly (config-free; LazyConfig's ``dataloader.train`` calls it).

    Args:
        dataset: the training dataset dicts (proposals attached, filtered), e.g.
            :func:`r2ios_d2.data.get_r2ios_dataset_dicts`.
        mapper: the dataset mapper (e.g. :class:`r2ios_d2.data.PrecomputedProposalMapper`).
        total_batch_size: images per step over all processes.
        seed: stream seed; < 0 draws one random seed shared by all processes (then a resumed
            run draws a new stream: exact resume needs ``seed >= 0``).
        aspect_ratio_grouping: batch landscape and portrait images separately.
        num_workers: data-loader worker processes.

    Returns:
        a :class:`ResumableTrainLoader` yielding per-rank lists of mapped dicts.
    """
    dicts = dataset
    if seed < 0:
        seed = comm.shared_random_seed()
    world = comm.get_world_size()
    total = int(total_batch_size)
    if total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {total} is not divisible by {world} processes")
    grouping = bool(aspect_ratio_grouping)
    landscape = [d["width"] > d["height"] for d in dicts] if grouping else None

    def build(start_iter: int) -> Any:
        order = StreamOrder(len(dicts), seed)
        sampler = ResumableTrainingSampler(order, landscape, total // world, start_iter)
        return build_detection_train_loader(
            _PositionedDicts(dicts, order),
            mapper=PositionSeededMapper(mapper, seed),
            sampler=sampler,
            total_batch_size=total,
            aspect_ratio_grouping=grouping,
            num_workers=int(num_workers),
        )

    return ResumableTrainLoader(build)
