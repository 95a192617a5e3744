"""The epoch sampler: determinism, weighted composition, exact mid-epoch resume."""

import pickle
from collections import Counter

import pytest

from trainer.data.sampling import EpochSampler, epoch_counts


def order(**kw):
    args = {"sizes": [100, 300], "weights": [1.0, 1.0], "epoch_size": 200, "seed": 7, "epoch": 1}
    args.update(kw)
    return list(EpochSampler(**args))


def test_same_seed_and_epoch_give_the_same_order():
    assert order() == order()


def test_epoch_and_seed_change_the_order():
    base = order()
    assert order(epoch=2) != base
    assert order(seed=8) != base


def test_start_is_the_tail_of_the_full_order():
    full = order(epoch=3)
    for start in (0, 1, 57, 199, 200):
        tail = list(EpochSampler([100, 300], [1.0, 1.0], 200, seed=7, epoch=3, start=start))
        assert tail == full[start:]
        assert len(EpochSampler([100, 300], [1.0, 1.0], 200, 7, 3, start)) == 200 - start


def test_start_outside_the_epoch_is_rejected():
    with pytest.raises(ValueError, match="outside the epoch"):
        EpochSampler([10], [1.0], 10, seed=0, epoch=0, start=11)


def test_weights_set_each_datasets_share_of_the_epoch():
    idx = order(sizes=[1000, 1000, 1000], weights=[1.0, 2.0, 1.0], epoch_size=400)
    per = Counter(i // 1000 for i in idx)
    assert per == {0: 100, 1: 200, 2: 100}


def test_counts_always_sum_to_the_epoch_size():
    for weights in ([1.0, 1.0, 1.0], [0.3, 0.3, 0.4], [5.0, 1.0], [1.0]):
        for epoch_size in (1, 7, 100, 1001):
            counts = epoch_counts([50] * len(weights), weights, epoch_size)
            assert sum(counts) == epoch_size
    assert epoch_counts([10, 10, 10], [1, 1, 1], 10) == [4, 3, 3]


def test_no_repeats_within_a_dataset_when_it_is_large_enough():
    idx = order(sizes=[100, 300], weights=[1.0, 1.0], epoch_size=200)
    assert len(set(idx)) == 200
    assert all(0 <= i < 400 for i in idx)


def test_small_dataset_cycles_through_all_items_evenly():
    # 10 items must supply 25 draws: every item 2 or 3 times, never 0 or 4
    idx = order(sizes=[10, 1000], weights=[1.0, 1.0], epoch_size=50)
    small = Counter(i for i in idx if i < 10)
    assert sum(small.values()) == 25
    assert set(small) == set(range(10))
    assert set(small.values()) <= {2, 3}


def test_equal_weights_split_the_epoch_equally_whatever_the_sizes():
    idx = order(sizes=[30, 70], weights=[1.0, 1.0], epoch_size=100)
    # equal weights over unequal sizes: 50/50, so the 30-item set repeats and the 70 do not
    assert Counter(i < 30 for i in idx) == {True: 50, False: 50}


def test_sampler_pickles_for_dataloader_workers():
    s = EpochSampler([10, 20], [1.0, 3.0], 16, seed=1, epoch=4, start=3)
    assert list(pickle.loads(pickle.dumps(s))) == list(s)
