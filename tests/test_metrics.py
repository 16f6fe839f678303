import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelwise.metrics import confusion_matrix, format_scores, scores

# Seed 003's worked example: 4x4 truth (one class per row) and prediction.
TRUTH = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
PRED = torch.tensor([[1, 0, 0, 0], [1, 3, 0, 1], [2, 2, 2, 3], [3, 1, 0, 0]])


def test_seed_003_worked_example():
    cm = confusion_matrix(PRED, TRUTH, num_classes=4)
    r = scores(cm)
    assert r["iou"] == pytest.approx([3 / 7, 2 / 6, 3 / 4, 1 / 6])
    assert round(r["mean_iou"], 3) == 0.420
    # TP/FP/FN of class 0 from the seed: 3, 3, 1
    assert int(cm[0, 0]) == 3 and int(cm[1:, 0].sum()) == 3 and int(cm[0, 1:].sum()) == 1
    assert r["pixel_accuracy"] == pytest.approx(9 / 16)


def test_ignore_index_and_fcn_metrics():
    truth = torch.tensor([0, 0, 1, 1, 255, 255])
    pred = torch.tensor([0, 1, 1, 1, 0, 1])
    cm = confusion_matrix(pred, truth, 2)
    assert cm.tolist() == [[1, 1], [0, 2]]
    r = scores(cm)
    assert r["pixel_accuracy"] == pytest.approx(3 / 4)
    assert r["mean_accuracy"] == pytest.approx((1 / 2 + 1) / 2)
    assert r["iou"] == pytest.approx([1 / 2, 2 / 3])
    assert r["fw_iou"] == pytest.approx((2 * 1 / 2 + 2 * 2 / 3) / 4)
    assert r["dice"] == pytest.approx([2 / 3, 4 / 5])


def test_absent_class_is_reported_not_scored():
    truth = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 1])
    r = scores(confusion_matrix(pred, truth, 3))
    assert math.isnan(r["iou"][2]) and r["present"] == [True, True, False]
    assert r["mean_iou"] == 1.0
    assert "absent" in format_scores(r, ["a", "b", "c"])


def test_predicted_only_class_counts_as_zero():
    truth = torch.tensor([0, 0, 0, 0])
    pred = torch.tensor([0, 0, 0, 1])
    r = scores(confusion_matrix(pred, truth, 2))
    assert r["iou"] == [0.75, 0.0]
    assert r["mean_iou"] == pytest.approx(0.375)
    assert math.isnan(r["accuracy"][1])  # no ground truth of class 1


def test_out_of_range_label_raises():
    with pytest.raises(ValueError, match="label 7 outside"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 6).flatmap(
        lambda c: st.tuples(
            st.just(c),
            st.lists(st.tuples(st.integers(0, c - 1), st.integers(0, c - 1)), min_size=1),
        )
    ),
    st.randoms(use_true_random=False),
)
def test_matches_brute_force_and_permutation_invariant(data, rnd):
    c, pairs = data
    truth = torch.tensor([t for t, _ in pairs])
    pred = torch.tensor([p for _, p in pairs])
    r = scores(confusion_matrix(pred, truth, c))
    for k in range(c):
        inter = sum(1 for t, p in pairs if t == k and p == k)
        union = sum(1 for t, p in pairs if t == k or p == k)
        if union == 0:
            assert math.isnan(r["iou"][k])
        else:
            assert r["iou"][k] == pytest.approx(inter / union)
            assert 0.0 <= r["iou"][k] <= 1.0
    # relabelling the classes permutes per-class IoU and leaves the means unchanged
    perm = list(range(c))
    rnd.shuffle(perm)
    lut = torch.tensor(perm)
    r2 = scores(confusion_matrix(lut[pred], lut[truth], c))
    assert r2["mean_iou"] == pytest.approx(r["mean_iou"], nan_ok=True)
    assert r2["fw_iou"] == pytest.approx(r["fw_iou"], nan_ok=True)
    for k in range(c):
        assert r2["iou"][perm[k]] == pytest.approx(r["iou"][k], nan_ok=True)
