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


# --- helpers of the method-script tests (several test files use them) ---------------------------------------------
def tiny_args(data, teacher, out, *extra):
    """teacher: a checkpoint, or None for the shipped teacher that --teacher (in extra) names."""
    return ["--data-dir", str(data), *(["--teacher-ckpt", str(teacher)] if teacher else []), "--out-dir", str(out),
            "--steps", "6", "--batch-size", "16", "--eval-every", "3", "--ckpt-every", "2", "--eval-batch-size", "32",
            "--warmup-steps", "0", "--lr", "1e-2", "--fit-noise-steps", "2",
            "--calibrate-samples", "16", "--calibrate-steps", "2", *extra]  # --calibrate-bn is on by default


def tiny_align_args(data, teacher, out, *extra):
    """tiny_args for batch_align_ln_gn.py, which has no noise fit or calibration but probes the teacher first."""
    return ["--data-dir", str(data), "--teacher-ckpt", str(teacher), "--out-dir", str(out), "--steps", "6",
            "--batch-size", "16", "--eval-every", "3", "--ckpt-every", "2", "--eval-batch-size", "32",
            "--warmup-steps", "0", "--lr", "1e-2", "--probe-samples", "32", *extra]


def final_state(run_root):
    """The student's and the optimizer's tensors in the final checkpoint of the one run under run_root."""
    ck = common.load_checkpoint(next(run_root.iterdir()) / "checkpoint.pt")
    flat = dict(ck["student"])
    for i, state in ck["optimizer"]["state"].items():
        flat.update({f"opt.{i}.{k}": v for k, v in state.items()})
    return flat


def assert_same_tensors(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_timing(results):
    """The metrics of a run, less what depends on the machine's speed and the clock."""
    drop = ("samples_per_s", "teacher_samples_per_s", "sampler_time_frac", "provenance", "args")
    return {k: v for k, v in results.items() if k not in drop}


def spy_on_loaded_teacher(monkeypatch):
    """Patch common.load_teacher so that the model a run loads is kept in the returned dict under 'model'."""
    loaded, real_load = {}, common.load_teacher

    def spy(*a, **kw):
        loaded["model"], info = real_load(*a, **kw)
        return loaded["model"], info
    monkeypatch.setattr(common, "load_teacher", spy)
    return loaded


def crash_after_second_save(monkeypatch):
    """Patch common.save_checkpoint so that the process "dies" right after writing its second checkpoint."""
    real_save, saves = common.save_checkpoint, []

    def save_then_crash(*a, **kw):
        real_save(*a, **kw)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(common, "save_checkpoint", save_then_crash)


HOST_READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__")


def host_reads_per_step(monkeypatch, module, files):
    """Record every read of a tensor's value on the host (.item(), .cpu(), bool(t), ...) made directly by code in
    `files`, with the step it happens in (steps counted by module.draw_batch calls; 0 = before the first step). On a
    GPU each such read waits for the device. Reads inside PyTorch itself (the optimizer's CPU step counter) are not ours
    and not counted."""
    reads, step = [], [0]
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **kw):
            caller = sys._getframe(1)
            if Path(caller.f_code.co_filename).name in files:
                reads.append((step[0], _name, f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"))
            return _real(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, spy)
    real_draw = module.draw_batch

    def counting_draw(*a, **kw):
        step[0] += 1
        return real_draw(*a, **kw)
    monkeypatch.setattr(module, "draw_batch", counting_draw)
    return reads
