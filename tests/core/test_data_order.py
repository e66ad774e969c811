"""Micro-batch order: repeats, same-size buckets, a fresh shuffle per epoch that a resumed run
reproduces from (seed, epoch) alone."""

from collections import Counter

import pytest

from comfyui_lora_lab.training.data_order import MicroBatchOrder, OrderItem

SMALL, LARGE, WIDE = (4, 8, 8), (4, 16, 16), (4, 8, 16)


def mixed_items():
    return [OrderItem(SMALL, 3), OrderItem(LARGE, 1), OrderItem(SMALL, 1), OrderItem(WIDE, 2),
            OrderItem(LARGE, 4), OrderItem(SMALL, 2)]


def test_repeats_expand_the_epoch():
    order = MicroBatchOrder(mixed_items(), batch_size=2, seed=0)
    # SMALL: 3+1+2 = 6 -> 3 batches; LARGE: 1+4 = 5 -> 3 batches; WIDE: 2 -> 1 batch
    assert order.samples_per_epoch == 13
    assert order.batches_per_epoch == 7
    assert len(order.epoch(0)) == 7
    single = MicroBatchOrder([OrderItem(SMALL, 5)], batch_size=1, seed=0)
    assert single.samples_per_epoch == single.batches_per_epoch == 5


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_every_sample_appears_exactly_repeats_times_per_epoch(batch_size, epoch):
    items = mixed_items()
    order = MicroBatchOrder(items, batch_size=batch_size, seed=11)
    batches = order.epoch(epoch)
    assert len(batches) == order.batches_per_epoch
    seen = Counter(i for batch in batches for i in batch)
    assert seen == Counter({i: item.repeats for i, item in enumerate(items)})
    assert all(1 <= len(batch) <= batch_size for batch in batches)


@pytest.mark.parametrize("batch_size", [2, 3, 8])
def test_only_equal_sizes_share_a_micro_batch(batch_size):
    items = mixed_items()
    order = MicroBatchOrder(items, batch_size=batch_size, seed=3)
    for epoch in range(4):
        for batch in order.epoch(epoch):
            assert len({items[i].size for i in batch}) == 1, batch


def test_a_bucket_fills_whole_batches_before_a_partial_one():
    # 5 same-size samples with batch size 2: two full batches and one single, never 3 partials
    order = MicroBatchOrder([OrderItem(SMALL, 1)] * 5, batch_size=2, seed=0)
    assert sorted(len(b) for b in order.epoch(0)) == [1, 2, 2]


def test_the_order_changes_between_epochs():
    order = MicroBatchOrder([OrderItem(SMALL, 1)] * 12, batch_size=3, seed=4)
    epochs = [order.epoch(e) for e in range(4)]
    assert len({str(e) for e in epochs}) == 4


def test_the_order_depends_on_the_seed():
    items = [OrderItem(SMALL, 1)] * 12
    assert MicroBatchOrder(items, 3, seed=1).epoch(0) != MicroBatchOrder(items, 3, seed=2).epoch(0)


def test_a_new_order_with_the_same_seed_repeats_every_epoch():
    # the resume property: nothing but (seed, epoch) decides the order
    items = mixed_items()
    first = MicroBatchOrder(items, batch_size=2, seed=21)
    run = [first.micro_batch(i) for i in range(40)]
    resumed = MicroBatchOrder(items, batch_size=2, seed=21)
    assert [resumed.micro_batch(i) for i in range(25, 40)] == run[25:40]
    # asking for epochs out of order (the cache keeps one epoch) gives the same answers
    assert resumed.epoch(3) == first.epoch(3)
    assert resumed.epoch(0) == MicroBatchOrder(items, batch_size=2, seed=21).epoch(0)
    assert resumed.epoch(3) == first.epoch(3)


def test_micro_batch_wraps_into_the_next_epoch():
    order = MicroBatchOrder(mixed_items(), batch_size=2, seed=5)
    n = order.batches_per_epoch
    for index in range(3 * n):
        epoch, members = order.micro_batch(index)
        assert epoch == index // n
        assert members == order.epoch(epoch)[index % n]
    assert order.micro_batch(n - 1)[0] == 0
    assert order.micro_batch(n)[0] == 1
    assert order.micro_batch(n) == (1, order.epoch(1)[0])


def test_items_are_never_mutated_and_order_item_is_a_value():
    items = mixed_items()
    copy = list(items)
    MicroBatchOrder(items, 2, 0).epoch(0)
    assert items == copy
    assert OrderItem(SMALL, 2) == OrderItem(SMALL, 2)


def test_an_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="dataset is empty"):
        MicroBatchOrder([], batch_size=1, seed=0)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_refused(batch_size):
    with pytest.raises(ValueError, match=f"batch size must be at least 1, not {batch_size}"):
        MicroBatchOrder([OrderItem(SMALL)], batch_size=batch_size, seed=0)
