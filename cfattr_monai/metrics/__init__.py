"""Metrics: localization (Hausdorff, weak localization, area ratio) and randomization sanity checks."""
