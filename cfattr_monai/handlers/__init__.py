"""Ignite handlers the bundles need."""
