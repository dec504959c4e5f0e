"""Composition-1k data: reading the release, composing the test set, training datasets, the demo set."""

# Release reading (matting.data.release). The command-line modules compose_test (the composer, and
# resolve_test_source, which composes a raw release's test set on demand) and make_demo are not imported here:
# `python -m` on a module that its package already imported triggers a runpy warning.
from matting.data.release import (
    TestDataset,
    TestRecord,
    TrainingRelease,
    load_fg_alpha,
    load_test_item,
    read_test_folder,
    read_training_release,
    split_validation,
    verify_training_release,
)

__all__ = [
    "TestDataset",
    "TestRecord",
    "TrainingRelease",
    "load_fg_alpha",
    "load_test_item",
    "read_test_folder",
    "read_training_release",
    "split_validation",
    "verify_training_release",
]
