"""ImageFolder datasets (--dataset folder / imagenet100): decoded once into the uint8 cache, clear errors when absent,
and a teacher trained and distilled on one end to end."""
import numpy as np
import pytest
import torch
from PIL import Image

import common
import cs_rejection_bn as kd
import train_teacher

COLORS = {"cat": (200, 30, 30), "dog": (20, 40, 220)}


@pytest.fixture
def folder_tree(tmp_path):
    """root/{train,val}/{cat,dog}/*.png: one flat colour per class, of assorted sizes and aspect ratios."""
    root = tmp_path / "tree"
    for split, n in (("train", 6), ("val", 3)):
        for cls, color in COLORS.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + 7 * i, 30 + 11 * i), color).save(root / split / cls / f"{i}.png")
    (root / "val" / "cat" / "notes.txt").write_text("not an image")  # skipped
    return root


def test_a_folder_split_is_decoded_centre_cropped_and_cached(folder_tree):
    x, y = common.load_split("folder", "test", folder_tree, image_size=32)
    assert x.dtype == torch.uint8 and x.shape == (6, 32, 32, 3) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert (x[:3] == torch.tensor(COLORS["cat"], dtype=torch.uint8)).all()  # flat images stay their colour
    assert (folder_tree / "folder_test_32.npz").is_file() and common.num_classes("folder", folder_tree) == 2
    for split in ("train", "val"):  # the cache alone is enough from now on
        for f in (folder_tree / split).rglob("*.png"):
            f.unlink()
    x2, y2 = common.load_split("folder", "test", folder_tree, image_size=32)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_missing_or_wrong_trees_are_clear_errors(folder_tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/val does not exist.*ImageFolder tree"):
        common.load_split("folder", "test", tmp_path / "nowhere", image_size=32)
    with pytest.raises(ValueError, match="ImageNet-100 has 100 classes, this tree has 2"):
        common.load_split("imagenet100", "test", folder_tree, image_size=32)
    with pytest.raises(FileNotFoundError, match="neither train/ nor val/"):
        common.num_classes("folder", tmp_path / "nowhere")


def test_imagenet_shaped_models_build_for_any_class_count():
    assert common.build_model("imagenet_resnet34", 7, "gn")(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    assert common.build_model("imagenet_vit_b_16", 100).heads.head.out_features == 100
    with pytest.raises(ValueError, match="LayerNorm only"):
        common.build_model("imagenet_vit_b_16", 100, "bn")


def test_train_and_distil_on_a_folder_dataset(folder_tree, tmp_path):
    ckpt = tmp_path / "t.pt"
    train_teacher.main(["--model", "imagenet_resnet18", "--dataset", "folder", "--data-dir", str(folder_tree),
                        "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--no-bf16", "--out", str(ckpt)])
    blob = common.load_checkpoint(ckpt)
    assert blob["image_size"] == 32 and blob["num_classes"] == 2 and blob["dataset"] == "folder"
    assert np.allclose(blob["mean"], common.IMAGENET_STATS[0])
    # the teacher saw 12 flat images: its running statistics do not describe noise (in eval mode its activations on
    # noise overflow), so neither the noise fit nor the calibration, which read them, can run
    res = kd.main(["--teacher", "imagenet_resnet18", "--student", "imagenet_resnet18", "--dataset", "folder",
                   "--data-dir", str(folder_tree), "--teacher-ckpt", str(ckpt), "--out-dir", str(tmp_path / "runs"),
                   "--steps", "2", "--batch-size", "8", "--eval-every", "2", "--no-bf16", "--no-fit-noise",
                   "--no-calibrate-bn"])
    assert res["eval/num_images"] == 6 and res["samples_seen"] == 16 and len(res["noise/label_hist"]) == 2
