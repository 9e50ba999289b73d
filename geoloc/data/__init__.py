"""Manifests, the cell index, splits, the resize cache and torch datasets."""
