"""cfattr-monai: domain-aware counterfactual attribution for medical image classifiers."""

__version__ = "0.1.0"
