"""Shared fixtures: small generated data and small teachers, so that most tests need neither ../shared nor the
internet, and a temporary results folder for bench/report.py. The tests that check the real shared teachers skip with a
reason when ../shared is absent."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]  # the method scripts and the benchmarks (bench/report.py), by name
SHARED = REPO.parent / "shared"

import common  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A fake CIFAR-10 cache: 64 test and 64 train images of 32x32 with labels 0..9, in the project's npz layout."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(d / f"cifar10_{split}.npz", x=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
                 y=np.arange(64) % 10)
    return d


def save_teacher(path, model, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), arch="resnet20", norm="bn"):
    common.save_checkpoint(path, model=model.state_dict(), arch=arch, norm=norm, num_classes=10, mean=list(mean),
                           std=list(std), test_acc=None)
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
    """A ResNet-20 with random weights and non-trivial running statistics, saved in our checkpoint format."""
    torch.manual_seed(123)
    model = common.build_model("resnet20")
    model.train()
    with torch.no_grad():  # a few batches give the BN layers running statistics unlike a fresh layer's (0, 1)
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32) * 2 + 0.5)
    return save_teacher(tmp_path_factory.mktemp("teacher") / "resnet20.pt", model.eval())


@pytest.fixture(scope="session")
def gn_teacher(tmp_path_factory):
    """A ResNet-20 with GroupNorm(8) and random weights (seed 7), saved in our checkpoint format."""
    torch.manual_seed(7)
    return save_teacher(tmp_path_factory.mktemp("gn") / "gn.pt", common.build_model("resnet20", norm="gn"), norm="gn")


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    """An empty results folder, tmp_path/results, that bench/report.py reads instead of the repository's results/."""
    import report
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    return tmp_path / "results"
