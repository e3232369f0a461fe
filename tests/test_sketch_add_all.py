"""``Sketch.add_all`` (the aggregate's inter-token gaps) equals ``add`` of each value."""

from __future__ import annotations

import random

from loadkit.sketch import Sketch


def test_add_all_equals_add_one_by_one() -> None:
    rng = random.Random(7)
    batches = [
        [rng.uniform(0.5, 8.0) for _ in range(100)],
        [0.0, 1e-320, 3.2, 1e9, 0.01],  # zero, below the sketch's resolution, the bins grow
        [],
        [rng.lognormvariate(1.0, 2.0) for _ in range(500)],
        [-2.5, 4.0],  # negative values go to the negative store, as with add
    ]
    one, many = Sketch(), Sketch()
    for batch in batches:
        for value in batch:
            one.add(value)
        many.add_all(batch)
        assert many.to_wire() == one.to_wire()
        assert many._sketch._negative_store.bins == one._sketch._negative_store.bins
        for q in (0.0, 0.5, 0.99, 1.0):
            assert many.quantile(q) == one.quantile(q)
