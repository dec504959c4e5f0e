"""Composition-1k data: reading the release, composing the test set, training datasets, the demo set."""
