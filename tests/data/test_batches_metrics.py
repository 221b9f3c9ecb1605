"""Length-bucketed batches (deterministic, complete, low padding), collation, and metrics."""
import numpy as np
import pytest

from bertclf.data.batches import collate, epoch_batches, length_sorted_batches, split_micro
from bertclf.data.metrics import classification_report


@pytest.fixture
def lens():
    return np.random.default_rng(0).integers(3, 120, size=1003)


def test_epoch_batches_cover_every_row_once_and_are_seeded(lens):
    b = epoch_batches(lens, 32, seed=1, epoch=0)
    rows = np.concatenate(b)
    assert sorted(rows.tolist()) == list(range(len(lens)))
    assert all(np.array_equal(x, y) for x, y in zip(b, epoch_batches(lens, 32, seed=1, epoch=0)))
    assert not all(np.array_equal(x, y) for x, y in zip(b, epoch_batches(lens, 32, seed=1, epoch=1)))


def test_bucketing_cuts_padding(lens):
    def padded(batches):
        return sum(len(r) * lens[r].max() for r in batches)

    random_order = np.random.default_rng(0).permutation(len(lens))
    naive = [random_order[i:i + 32] for i in range(0, len(lens), 32)]
    assert padded(epoch_batches(lens, 32, 1, 0)) < 0.6 * padded(naive)


def test_distributed_shares_partition_each_global_batch(lens):
    one = epoch_batches(lens, 64, 3, 0)
    r0 = epoch_batches(lens, 32, 3, 0, world_size=2, rank=0)
    r1 = epoch_batches(lens, 32, 3, 0, world_size=2, rank=1)
    assert len(r0) == len(r1) == len(one)
    for g, a, b in zip(one, r0, r1):
        assert sorted(np.concatenate([a, b]).tolist()) == sorted(g.tolist())


def test_collate_pads_to_multiple_of_8():
    ids = [np.array([0, 5, 6, 2]), np.array([0, 7, 2]), np.arange(11)]
    b = collate(ids, np.array([0, 1]), pad_id=1, labels=np.array([1, 0, 1]))
    assert b["input_ids"].shape == (2, 8)
    assert b["attention_mask"].sum().item() == 7
    assert b["input_ids"][1, 3:].tolist() == [1] * 5 and b["labels"].tolist() == [1, 0]
    assert collate(ids, np.array([2]), pad_id=1)["input_ids"].shape == (1, 16)


def test_split_micro_and_inference_order():
    parts = split_micro(np.arange(10), 4)
    assert [len(p) for p in parts] == [3, 3, 2, 2] and np.concatenate(parts).tolist() == list(range(10))
    assert len(split_micro(np.arange(3), 8)) == 3
    lens = np.array([5, 9, 1, 7])
    assert np.concatenate(length_sorted_batches(lens, 2)).tolist() == [1, 3, 0, 2]


def test_classification_report_against_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    rep = classification_report(y, p, ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert rep["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert rep["confusion_matrix"] == confusion_matrix(y, p).tolist()
    prec, rec, f1, sup = precision_recall_fscore_support(y, p)
    assert rep["per_class"]["b"]["recall"] == pytest.approx(rec[1]) and rep["per_class"]["c"]["support"] == sup[2]


def list_of_arrays_plan(lengths, batch_size, seed, epoch, pool=64, world_size=1, rank=0):
    """The plan as bertclf built it before Batches (a list of arrays): the spec the compact plan must equal, so a
    run resumed mid-epoch across the change sees the same batches."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    global_bs = batch_size * world_size
    batches = []
    for start in range(0, len(order), global_bs * pool):
        chunk = order[start:start + global_bs * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + global_bs] for i in range(0, len(chunk), global_bs)]
    batches = [batches[i] for i in rng.permutation(len(batches))]
    if world_size == 1:
        return batches
    return [(b if len(b) >= world_size else np.concatenate([b, order[:world_size - len(b)]]))[rank::world_size]
            for b in batches]


@pytest.mark.parametrize("n,batch_size,world_size", [(1003, 32, 1), (1003, 7, 3), (65, 32, 2), (5, 2, 4), (1, 1, 2)])
@pytest.mark.parametrize("gather_batches", [3, 1 << 15])  # many blocks of batches gathered, and one
def test_the_compact_plan_is_the_list_of_arrays_plan_row_for_row(n, batch_size, world_size, gather_batches,
                                                                 monkeypatch):
    import bertclf.data.batches as B

    monkeypatch.setattr(B, "GATHER_BATCHES", gather_batches)
    lens = np.random.default_rng(n).integers(3, 120, size=n)
    for rank in range(world_size):
        want = list_of_arrays_plan(lens, batch_size, 4, 2, pool=4, world_size=world_size, rank=rank)
        got = epoch_batches(lens, batch_size, 4, 2, pool=4, world_size=world_size, rank=rank)
        assert len(got) == len(want)
        for k in (0, 1, len(want) // 2, len(want)):  # a resumed epoch slices the plan from its step
            assert len(got[k:]) == len(want[k:])
            assert all(np.array_equal(a, b) for a, b in zip(got[k:], want[k:]))
        assert all(np.array_equal(got[i], want[i]) for i in range(len(want)))
        # one int32 array of rows and one offset per batch: no Python object per batch
        assert got.rows.dtype == np.int32 and got.rows.nbytes == 4 * sum(map(len, want))
