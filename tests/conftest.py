"""Shared test fixtures: paths to the repository, its configs and the COCO128 sample."""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
COCO128 = REPO_ROOT.parent / "shared" / "data" / "coco128"


@pytest.fixture(scope="session")
def coco128_image_path():
    """The first COCO128 val2017 image (skips when the sample data is absent)."""
    folder = COCO128 / "val2017"
    images = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not images:
        pytest.skip(f"COCO128 sample not found at {folder}")
    return images[0]
