import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE_FIXTURE = SHARED / "fixtures" / "reference"


def pytest_configure(config):
    # Tests are small; two threads match the CI machine and keep runs comparable.
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The original code's checkpoints and outputs; skipped in a user's checkout, required in CI."""
    if not REFERENCE_FIXTURE.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the reference fixture is missing at {REFERENCE_FIXTURE}")
        pytest.skip(f"reference fixture not found at {REFERENCE_FIXTURE} (it lives in ../shared/)")
    return REFERENCE_FIXTURE


@pytest.fixture(scope="session")
def task_world(tmp_path_factory) -> Path:
    """A tiny world and its real feature store, shared by the task test files of one session."""
    from vilbert.features.boxes import read_coco_boxes
    from vilbert.features.extract import ExtractConfig, extract_features
    from vilbert.world import generate_world

    root = tmp_path_factory.getbasetemp() / "task_world"
    generate_world(root, num_images=20, seed=3, image_size=96, progress=False)
    entries = read_coco_boxes(root / "proposals.json", root / "images")
    extract_features(entries, root / "features.lmdb", ExtractConfig(image_size=96, batch_size=12),
                     boxes_source="coco", progress=False)
    return root
