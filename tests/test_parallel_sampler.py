"""Resumable distributed sampler: per-(seed, epoch) order, rank interleaving, resume at another world size."""

import pytest

from dinolab.pretrain.parallel import ResumableDistributedSampler


def _global_batches(samplers, per_rank, steps):
    """The union of what the ranks see, as global batches, advancing like a training loop would."""
    batches = []
    for _ in range(steps):
        per_rank_lists = [list(s)[:per_rank] for s in samplers]
        # Rank r's j-th item is global position r + W·j: interleave to recover the global order.
        world = len(samplers)
        batches.append([per_rank_lists[j % world][j // world] for j in range(per_rank * world)])
        for s in samplers:
            s.advance(per_rank * len(samplers))
    return batches


def test_order_depends_on_seed_and_epoch_only():
    a = ResumableDistributedSampler(50, seed=3)
    b = ResumableDistributedSampler(50, seed=3)
    assert list(a) == list(b)
    assert sorted(a) == list(range(50))
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(ResumableDistributedSampler(50, seed=4)) != list(a)
    assert list(ResumableDistributedSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_ranks_take_interleaved_disjoint_items():
    order = ResumableDistributedSampler(11, seed=1).global_order().tolist()
    ranks = [ResumableDistributedSampler(11, rank=r, world_size=2, seed=1) for r in range(2)]
    assert list(ranks[0]) == order[0:10:2] and list(ranks[1]) == order[1:10:2]
    assert len(ranks[0]) == len(ranks[1]) == 5  # tail cut to a multiple of the world size


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 4)])
def test_resume_at_another_world_size_continues_the_global_batches(before, after):
    global_batch, n = 4, 40
    uninterrupted = _global_batches(
        [ResumableDistributedSampler(n, r, before, seed=9) for r in range(before)], global_batch // before, 6
    )
    first = [ResumableDistributedSampler(n, r, before, seed=9) for r in range(before)]
    head = _global_batches(first, global_batch // before, 3)
    state = first[0].state_dict()
    assert state["consumed"] == 3 * global_batch and all(s.state_dict() == state for s in first)
    resumed = [ResumableDistributedSampler(n, r, after, seed=9) for r in range(after)]
    for sampler in resumed:
        sampler.load_state_dict(state)
    tail = _global_batches(resumed, global_batch // after, 3)
    assert head + tail == uninterrupted
    order = ResumableDistributedSampler(n, seed=9).global_order().tolist()
    assert uninterrupted == [order[k * global_batch : (k + 1) * global_batch] for k in range(6)]


def test_mismatched_state_and_bad_arguments_are_errors():
    sampler = ResumableDistributedSampler(10, seed=0)
    with pytest.raises(ValueError, match="num_items"):
        sampler.load_state_dict(ResumableDistributedSampler(12, seed=0).state_dict())
    with pytest.raises(ValueError, match="rank 2"):
        ResumableDistributedSampler(10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="at least one item"):
        ResumableDistributedSampler(0)
