from __future__ import annotations

import numpy as np
import pytest

from clipq.runtime.metrics import accuracy, mean_cosine, recall_at_k
from clipq.runtime.vectors import l2_normalize


def test_recall_at_k_hand_computed():
    # query 0: relevant item 0 ranks 1st; query 1: relevant item 2 ranks 3rd; query 2: item 1 ranks 2nd
    sim = np.array([[0.9, 0.1, 0.2], [0.5, 0.4, 0.3], [0.8, 0.7, 0.1]])
    r = recall_at_k(sim, np.array([0, 2, 1]), ks=(1, 2, 3))
    assert r == {1: pytest.approx(100 / 3), 2: pytest.approx(200 / 3), 3: pytest.approx(100.0)}


def test_recall_ties_are_pessimistic_only_for_strictly_higher():
    sim = np.array([[0.5, 0.5]])
    assert recall_at_k(sim, np.array([1]), ks=(1,))[1] == 100.0
    assert recall_at_k(np.array([[0.6, 0.5]]), np.array([1]), ks=(1,))[1] == 0.0


def test_accuracy_and_cosine():
    assert accuracy(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 50.0
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert mean_cosine(a, b) == pytest.approx(0.5)
    n = l2_normalize(np.array([[3.0, 4.0]]))
    assert np.allclose(n, [[0.6, 0.8]])
