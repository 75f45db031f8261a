"""Metrics against hand-computed cases, and the checkpoint/CSV helpers."""
import math

import numpy as np
import pytest
import torch

from ddn import DDNError, DDNWarning
from ddn.experiments.common import (average_precision, classification_metrics,
                                    epoch_generator, format_table, mean_average_precision,
                                    read_results, append_results, topk_accuracy)

# 4 samples, 3 classes
SCORES = torch.tensor([[0.1, 0.7, 0.2],
                       [0.5, 0.3, 0.2],
                       [0.2, 0.2, 0.6],
                       [0.3, 0.4, 0.3]])
LABELS = torch.tensor([1, 0, 0, 2])


def test_topk_by_hand():
    # argmax: 1, 0, 2, 1 → correct on samples 0, 1 → 2/4
    assert topk_accuracy(SCORES, LABELS, 1) == 0.5
    # top-2: {1,2}, {0,1}, {2, 0 or 1 (tie)}, {1, 0 or 2 (tie)}: samples 0, 1 surely right
    assert topk_accuracy(SCORES, LABELS, 3) == 1.0
    assert topk_accuracy(torch.eye(3), torch.tensor([0, 1, 0]), 1) == pytest.approx(2 / 3)


def test_ap_by_hand():
    # class 0 scores: .1 .5 .2 .3, positives samples 1 and 2
    # ranking: s1(.5, +) s3(.3, -) s2(.2, +) s0(.1, -): precision at the hits 1/1, 2/3
    assert average_precision(SCORES[:, 0], LABELS == 0) == pytest.approx((1 + 2 / 3) / 2)
    # class 1: .7(+) .4 .3 .2 → AP 1
    assert average_precision(SCORES[:, 1], LABELS == 1) == pytest.approx(1.0)
    # class 2: .6(s2,-) .3(s3,+) .2 .2 → precision at the hit 1/2
    assert average_precision(SCORES[:, 2], LABELS == 2) == pytest.approx(0.5)
    assert mean_average_precision(SCORES, LABELS) == pytest.approx((5 / 6 + 1 + 0.5) / 3)


def test_ap_ties_enter_together():
    # two tied scores, one positive: the tie block has precision 1/2
    assert average_precision([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert average_precision([0.5, 0.5], [False, True]) == pytest.approx(0.5)
    assert math.isnan(average_precision([0.1, 0.2], [False, False]))


def test_ap_matches_bruteforce_random():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 5, size=30).astype(float)      # many ties
        y = rng.random(30) < 0.3
        if not y.any():
            continue
        # brute force: for each distinct threshold t (descending), P and R of s >= t
        ts = np.unique(s)[::-1]
        ap, prev_r = 0.0, 0.0
        for t in ts:
            sel = s >= t
            r = (sel & y).sum() / y.sum()
            ap += (r - prev_r) * (sel & y).sum() / sel.sum()
            prev_r = r
        assert average_precision(s, y) == pytest.approx(ap)


def test_map_over_all_classes_warns_for_absent_class():
    scores = torch.rand(6, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])        # class 3 absent
    with pytest.warns(DDNWarning, match=r"\[3\]"):
        mean_average_precision(scores, labels)
    m = classification_metrics(SCORES, LABELS, ks=(1, 5))
    assert m["top1"] == 50.0 and m["top5"] == 100.0
    assert m["map"] == pytest.approx(100 * (5 / 6 + 1 + 0.5) / 3)
    with pytest.raises(DDNError):
        topk_accuracy(torch.rand(3), torch.tensor([0, 1, 2]))


def test_epoch_generator_depends_only_on_seed_and_epoch():
    a = torch.rand(5, generator=epoch_generator(3, 7))
    torch.rand(100)
    b = torch.rand(5, generator=epoch_generator(3, 7))
    c = torch.rand(5, generator=epoch_generator(3, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_csv_roundtrip_and_table(tmp_path):
    p = tmp_path / "r.csv"
    append_results(p, [dict(a="x", b=1.5)])
    append_results(p, [dict(a="y", b=2.0)])
    rows = read_results(p)
    assert [r["a"] for r in rows] == ["x", "y"] and rows[1]["b"] == 2.0
    t = format_table(["a", "b"], [["x", 1.25], ["y", float("nan")]])
    assert "| x | 1.2 |" in t and "–" in t
