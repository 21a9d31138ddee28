"""Transforms: hole masks, the smooth-max mapping into compact masks, marginalizers."""
