"""The on-device sample queue and collection policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from device.agent.collector import CollectionPolicy, SampleQueue, Sampler, decode_input, encode_input


def _x(i: int) -> np.ndarray:
    return np.full((4, 4, 1), i % 256, dtype=np.uint8)


def test_policies() -> None:
    assert all(Sampler(CollectionPolicy("all")).keep(c) for c in (0.1, 0.99))
    low = Sampler(CollectionPolicy("low-confidence", threshold=0.6))
    assert low.keep(0.59) and not low.keep(0.61) and low.keep(0.99, labelled=True)
    rnd = Sampler(CollectionPolicy("random", rate=0.25, seed=3))
    kept = [rnd.keep(0.5) for _ in range(4000)]
    assert 900 < sum(kept) < 1100  # binomial(4000, 0.25): mean 1000, sd 27
    again = Sampler(CollectionPolicy("random", rate=0.25, seed=3))
    assert [again.keep(0.5) for _ in range(4000)] == kept  # same seed, same choices
    with pytest.raises(ValueError, match="policy"):
        CollectionPolicy("sometimes")
    with pytest.raises(ValueError, match="rate"):
        CollectionPolicy("random", rate=1.5)


def test_input_round_trip() -> None:
    x = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    assert np.array_equal(decode_input(encode_input(x)), x)


def test_cap_drops_oldest_and_counts_them(tmp_path: Path) -> None:
    q = SampleQueue(tmp_path / "q.sqlite", max_samples=5)
    ids = [q.put(_x(i), i % 10, 0.5, "1") for i in range(8)]
    assert len(q) == 5
    assert q.counters() == {"queued": 5, "sent": 0, "dropped": 3, "rejected": 0}
    key, batch = q.next_batch(10)
    assert [s["id"] for s in batch] == ids[3:]  # the three oldest went


def test_batches_survive_a_restart_with_the_same_key(tmp_path: Path) -> None:
    q = SampleQueue(tmp_path / "q.sqlite")
    ids = [q.put(_x(i), 1, 0.4, "1", label=i % 10) for i in range(7)]
    key, first = q.next_batch(4)
    q.close()  # the agent dies before the server answers
    q = SampleQueue(tmp_path / "q.sqlite")
    key2, again = q.next_batch(4)
    assert key2 == key and [s["id"] for s in again] == [s["id"] for s in first] == ids[:4]
    assert again[2]["label"] == 2 and again[0]["model_version"] == "1"
    assert q.ack(key) == 4
    key3, rest = q.next_batch(4)
    assert key3 != key and [s["id"] for s in rest] == ids[4:]
    q.ack(key3)
    assert q.next_batch(4) is None
    assert q.counters() == {"queued": 0, "sent": 7, "dropped": 0, "rejected": 0}


def test_samples_in_a_pending_batch_are_not_dropped(tmp_path: Path) -> None:
    q = SampleQueue(tmp_path / "q.sqlite", max_samples=3)
    ids = [q.put(_x(i), 0, 0.1, "1") for i in range(3)]
    key, batch = q.next_batch(2)
    q.put(_x(9), 0, 0.1, "1")
    q.put(_x(10), 0, 0.1, "1")
    _, same = q.next_batch(2)
    assert [s["id"] for s in same] == ids[:2]  # in flight: kept, so a resend carries the same samples
    assert q.counters()["dropped"] == 2
