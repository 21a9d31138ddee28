import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.metrics import compute_roc_auc

from cfattr_monai.handlers.roc_saver import ROCSaver
from cfattr_monai.metrics.roc import delong_auc, roc_curve


def _pairwise_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_delong_auc_matches_pairwise_definition_and_monai(seed, ties):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = rng.normal(labels * 0.8, 1.0)
    if ties:
        scores = np.round(scores, 0)
    auc, low, high = delong_auc(scores, labels)
    assert auc == pytest.approx(_pairwise_auc(scores, labels))
    assert auc == pytest.approx(compute_roc_auc(torch.tensor(scores), torch.tensor(labels)))
    assert 0.0 <= low < auc < high <= 1.0


def test_delong_interval_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 400):
        labels = np.arange(n) % 2
        auc, low, high = delong_auc(rng.normal(labels, 1.0), labels)
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_roc_curve_is_monotone_from_origin_to_one():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 50)
    scores = np.round(rng.normal(labels, 1.0), 1)  # with ties
    fpr, tpr, thresholds = roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thresholds) < 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(delong_auc(scores, labels)[0])  # area under the curve = AUC


@pytest.mark.parametrize(
    "scores,labels,message",
    [
        ([0.1, 0.2], [1, 1], "both classes"),
        ([0.1, 0.2, 0.3], [0, 1], "same number"),
        ([0.1, 0.2], [0, 2], "0 \\(healthy\\) or 1"),
        ([0.1, float("nan")], [0, 1], "NaN"),
    ],
)
def test_bad_input(scores, labels, message):
    for fn in (delong_auc, roc_curve):
        with pytest.raises(ValueError, match=message):
            fn(scores, labels)


def test_roc_saver_writes_json_and_png(tmp_path):
    saver = ROCSaver(tmp_path, name="roc")
    engine = Engine(lambda e, batch: [{"pred": torch.tensor([p]), "label": torch.tensor([y])} for p, y in batch])
    saver.attach(engine)
    engine.run([[(0.9, 1), (0.2, 0)], [(0.6, 1), (0.7, 0)], [(0.1, 0), (0.8, 1)]], max_epochs=2)
    record = json.loads((tmp_path / "roc.json").read_text())
    assert record["auc"] == pytest.approx(_pairwise_auc(np.array([0.9, 0.2, 0.6, 0.7, 0.1, 0.8]),
                                                        np.array([1, 0, 1, 0, 0, 1])))
    assert (record["n_pathological"], record["n_healthy"]) == (3, 3)  # reset per run, not accumulated over epochs
    assert record["thresholds"][0] is None and len(record["fpr"]) == len(record["tpr"])
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roc.json", "roc.png"]  # no temporary files left


YOUDEN_CASES = [
    ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.8),  # J = 0.5 first reached at 0.8
    ([0.9, 0.95, 0.97, 0.99], [0, 0, 1, 1], 0.97),  # uncalibrated: every p > 0.5, the operating point is not 0.5
    ([0.2, 0.3, 0.6, 0.7], [0, 0, 1, 1], 0.6),
]


@pytest.mark.parametrize("scores,labels,expected", YOUDEN_CASES)
def test_youden_threshold(scores, labels, expected):
    from cfattr_monai.metrics.roc import youden_threshold

    assert youden_threshold(scores, labels) == pytest.approx(expected)


def test_operating_threshold_runs_the_classifier_over_the_dataset():
    import torch

    from cfattr_monai.metrics.roc import operating_threshold

    class Brightness(torch.nn.Module):
        def forward(self, x):
            return 10 * (x.mean(dim=(1, 2, 3))[:, None] - 0.5)

    dataset = [{"image": torch.full((1, 4, 4), v)} for v in (0.1, 0.2, 0.6, 0.9)]
    theta = operating_threshold(Brightness(), dataset, [0, 0, 1, 1], batch_size=3)
    assert theta == pytest.approx(float(torch.sigmoid(torch.tensor(10 * 0.1))))


@pytest.mark.parametrize("scores", [[0.7, 0.7, 0.7, 0.7], [1.0, 1.0, 1.0, 1.0]])
def test_operating_threshold_of_a_constant_classifier_is_a_finite_probability(scores):
    import torch

    from cfattr_monai.metrics.roc import operating_threshold, youden_threshold

    assert youden_threshold(scores, [0, 1, 0, 1]) == scores[0]

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.logit(torch.full((x.shape[0], 1), scores[0], dtype=torch.float64)).float()

    theta = operating_threshold(Constant(), [{"image": torch.zeros(1, 2, 2)}] * 4, [0, 1, 0, 1])
    assert 0.0 < theta < 1.0
