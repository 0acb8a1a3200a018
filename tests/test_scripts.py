"""Every script: --help works; train_teacher.py trains, records and resumes on generated data."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import common
import train_teacher
from conftest import REPO

SCRIPTS = sorted(p.name for p in REPO.glob("*.py") if p.name != "common.py")
BENCH = sorted(f"bench/{p.name}" for p in (REPO / "bench").glob("*.py") if not p.name.startswith("_"))  # _: modules


@pytest.mark.parametrize("script", SCRIPTS + BENCH)
def test_help_of_every_script(script):
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:")
    if script in SCRIPTS:  # the method scripts: seeded (every flag's help string: tests/test_drift.py)
        assert "--seed" in out.stdout
        # a default is shown, except None, which the flag's own help resolves (e.g. by the model)
        assert "(default: None)" not in out.stdout and "(default: 0)" in out.stdout  # --seed's


def test_train_teacher_writes_a_loadable_checkpoint_with_its_recorded_accuracy(tiny_data, tmp_path):
    out = tmp_path / "t.pt"
    res = train_teacher.main(["--data-dir", str(tiny_data), "--epochs", "2", "--batch-size", "16", "--out", str(out)])
    model, info = common.load_teacher("resnet20", out)
    x, y = common.load_split("cifar10", "test", tiny_data)
    assert info["test_acc"] == res["test_acc"] == common.evaluate(model, x, y, info["mean"], info["std"], 500)
    assert info["mean"] == common.DATASET_STATS["cifar10"][0] and info["sha256"] == res["sha256"]
    blob = common.load_checkpoint(out)
    assert blob["arch"] == "resnet20" and blob["norm"] == "bn" and len(blob["history"]) == 2
    assert "train_teacher.py" in blob["command"] and not out.with_suffix(".partial").exists()


def test_train_teacher_resolves_its_optimizer_per_model_and_refuses_what_it_cannot_train(tmp_path):
    parse = lambda *flags: train_teacher.parse_args([*flags, "--out", str(tmp_path / "t.pt"), "--device", "cpu"])
    got = lambda a: (a.optimizer, a.lr, a.weight_decay)
    assert got(parse("--model", "resnet20")) == ("sgd", 0.2, 5e-4)  # the shipped CNN teachers' recipe
    assert got(parse("--model", "vit_tiny")) == ("adamw", 1e-3, 0.05)  # the shipped ViT's
    assert got(parse("--model", "resnet20", "--optimizer", "adamw")) == ("adamw", 1e-3, 0.05)  # not SGD's lr 0.2
    assert got(parse("--model", "vit_tiny", "--optimizer", "sgd", "--lr", "0.05")) == ("sgd", 0.05, 5e-4)
    assert got(parse("--model", "vit_tiny", "--weight-decay", "0")) == ("adamw", 1e-3, 0.0)  # given: kept
    assert parse("--model", "vit_tiny", "--dataset", "folder", "--image-size", "32").image_size == 32  # fits
    for bad in (["--label-smoothing", "1"], ["--weight-decay", "-1e-4"], ["--momentum", "1.5"],
                ["--model", "vit_tiny", "--dataset", "imagenet100"],  # 224 x 224 images for a 32 x 32 ViT
                ["--model", "imagenet_vit_b_16", "--dataset", "cifar10"]):
        with pytest.raises(SystemExit):  # one line, not a traceback from the loss or the optimizer
            parse(*bad)


def test_train_teacher_half_stores_float16_weights_and_the_accuracy_they_give(tiny_data, tmp_path):
    out = tmp_path / "h.pt"
    res = train_teacher.main(["--data-dir", str(tiny_data), "--epochs", "1", "--batch-size", "16", "--half",
                              "--no-bf16", "--out", str(out)])
    blob = common.load_checkpoint(out)
    floats = [v for v in blob["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert blob["model"]["bn1.num_batches_tracked"].dtype == torch.long and "test_acc_fp32_weights" in blob
    model, info = common.load_teacher("resnet20", out)
    assert next(model.parameters()).dtype == torch.float32  # loaded teachers compute in float32
    x, y = common.load_split("cifar10", "test", tiny_data)
    assert info["test_acc"] == res["test_acc"] == common.evaluate(model, x, y, info["mean"], info["std"], 500)


def test_train_teacher_crops_once_per_batch_or_once_per_image():
    # Each pixel holds its own coordinates, so an output image matches exactly one window of the padded image
    # (flipped or not): the window's corner is the crop offset drawn for it.
    h = w = 32
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).float()  # 2, h, w
    x = torch.cat([coords, coords[:1]]).expand(64, 3, h, w).clone()  # 64 copies of one image
    padded = F.pad(x[:1], (4, 4, 4, 4), mode="reflect")[0]

    def offsets(out):
        found = []
        for img in out:
            for dy in range(9):
                for dx in range(9):
                    window = padded[:, dy:dy + h, dx:dx + w]
                    if torch.equal(img, window) or torch.equal(img, window.flip(2)):
                        found.append((dy, dx))
        assert len(found) == len(out)  # every output image is a crop of the padded image, flipped or not
        return set(found)

    per_batch = offsets(train_teacher.augment(x, torch.Generator().manual_seed(0)))
    per_image = offsets(train_teacher.augment(x, torch.Generator().manual_seed(0), per_image=True))
    assert len(per_batch) == 1 and len(per_image) > 20


def interrupt_at_call(monkeypatch, module, name, n):
    """Make the n-th call of module.name raise KeyboardInterrupt (Ctrl-C there); the calls before it run as usual."""
    real, calls = getattr(module, name), []

    def stop_at_nth(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(module, name, stop_at_nth)


def test_train_teacher_resume_continues_where_it_stopped(tiny_data, tmp_path, monkeypatch):
    args = ["--data-dir", str(tiny_data), "--epochs", "2", "--batch-size", "16", "--no-bf16"]
    whole = train_teacher.main(args + ["--out", str(tmp_path / "whole.pt")])
    # Interrupt a second, identical run during its second epoch's evaluation: epoch 1 is saved in <out>.partial.
    cut = tmp_path / "cut.pt"
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_at_call(m, common, "evaluate", 2)
        train_teacher.main(args + ["--out", str(cut)])
    assert common.load_checkpoint(cut.with_suffix(".partial"))["epoch"] == 1 and not cut.exists()
    with pytest.raises(common.InputError, match="epochs=2.*now epochs=3"):  # another schedule cannot continue it
        train_teacher.main([*args, "--epochs", "3", "--out", str(cut), "--resume"])
    resumed = train_teacher.main(args + ["--out", str(cut), "--resume"])
    a, b = common.load_checkpoint(tmp_path / "whole.pt"), common.load_checkpoint(cut)
    assert resumed["test_acc"] == whole["test_acc"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_train_teacher_resumes_within_an_epoch_exactly(tiny_data, tmp_path, monkeypatch):
    """--ckpt-every saves within an epoch: a run stopped at its 7th step (of 4 per epoch) resumes from the .partial of
    step 6 (epoch 2, step 2) and ends with the weights of a run never stopped."""
    args = ["--data-dir", str(tiny_data), "--epochs", "2", "--batch-size", "16", "--no-bf16", "--ckpt-every", "2"]
    train_teacher.main(args + ["--out", str(tmp_path / "whole.pt")])
    cut = tmp_path / "cut.pt"
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_at_call(m, train_teacher, "augment", 7)  # augment runs once per step
        train_teacher.main(args + ["--out", str(cut)])
    saved = common.load_checkpoint(cut.with_suffix(".partial"))
    assert (saved["epoch"], saved["step"], len(saved["perm"])) == (1, 2, 64)
    train_teacher.main(args[:-2] + ["--ckpt-every", "3", "--out", str(cut), "--resume"])  # how often: not the recipe
    a, b = common.load_checkpoint(tmp_path / "whole.pt"), common.load_checkpoint(cut)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [h["test_acc"] for h in a["history"]] == [h["test_acc"] for h in b["history"]]
