import pytest
import torch

from cfattr_monai.networks.classifier_output import pathology_logit, pathology_probability

CASES = [
    (torch.tensor([1.5, -2.0]), torch.tensor([1.5, -2.0])),
    (torch.tensor([[1.5], [-2.0]]), torch.tensor([1.5, -2.0])),
    (torch.tensor([[0.5, 2.0], [1.0, -1.0]]), torch.tensor([1.5, -2.0])),
]


@pytest.mark.parametrize("output,expected", CASES)
def test_pathology_logit(output, expected):
    torch.testing.assert_close(pathology_logit(output), expected)


def test_probability_matches_softmax():
    out = torch.tensor([[0.3, 1.1]])
    torch.testing.assert_close(pathology_probability(out), torch.softmax(out, 1)[:, 1])


@pytest.mark.parametrize("shape", [(2, 3), (2, 1, 4), ()])
def test_bad_shape(shape):
    with pytest.raises(ValueError, match="binary classifier output"):
        pathology_logit(torch.zeros(shape))
