"""The shipped teachers: checksum, recorded accuracy reproduced, and the default command finds them."""
import json

import pytest
import torch

import common
from conftest import REPO, SHARED, tiny_args

MANIFEST = json.loads((REPO / "teachers" / "manifest.json").read_text())


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_shipped_teacher_matches_its_manifest_and_reproduces_its_accuracy(name):
    entry, path = MANIFEST[name], REPO / "teachers" / name
    assert common.sha256_of(path) == entry["sha256"]
    size, state = path.stat().st_size, torch.load(path, weights_only=True)["model"]
    weights = [v for v in state.values() if v.is_floating_point()]
    if size >= 5_000_000:  # the project's limit per shipped teacher, except for one stored in float16 (`--half`):
        # a ResNet-34's 21M parameters need 43 MB even then; such a file holds nothing but its float16 weights
        assert {v.dtype for v in weights} == {torch.float16}, f"{name}: {size} bytes, above 5 MB and not float16"
        assert size < 2 * sum(v.numel() for v in weights) + 1_000_000
    model, info = common.load_teacher(entry["arch"], path)
    assert info["test_acc"] == entry["test_acc"] and info["norm"] == entry["norm"]
    data = SHARED / "data"
    if not (data / f"{entry['dataset']}_test.npz").is_file():
        pytest.skip(f"no {entry['dataset']} test split in {data}")
    x, y = common.load_split(entry["dataset"], "test", data)
    assert common.evaluate(model, x, y, info["mean"], info["std"], batch_size=500) == pytest.approx(entry["test_acc"], abs=1e-4)


def test_the_default_command_uses_the_shipped_resnet20():
    import cs_rejection_bn
    args = cs_rejection_bn.parse_args([])
    assert common.teacher_ckpt_or_exit(args.teacher, args.dataset) == str(REPO / "teachers" / "resnet20_cifar10_bn.pt")
    assert "resnet20_cifar10_bn.pt" in MANIFEST


def test_batch_alignment_defaults_to_the_shipped_groupnorm_resnet20():
    import batch_align_ln_gn
    args = batch_align_ln_gn.parse_args([])
    path = common.teacher_ckpt_or_exit(args.teacher, args.dataset, norm=args.teacher_norm)
    assert path == str(REPO / "teachers" / "resnet20_cifar10_gn.pt")
    assert "resnet20_cifar10_gn.pt" in MANIFEST


def test_the_headline_command_runs_on_the_shipped_resnet34(tiny_data, tmp_path):
    """`python cs_rejection_bn.py --teacher resnet34 --dataset cifar10` on a fresh clone: no --teacher-ckpt, so the
    ResNet-34 we ship, the prior work's ResNet-18 student, the stage outputs matched (their shapes agree) and the
    student calibrated, for 2 steps of 8 on the 64 generated images (one step of the noise fit)."""
    import cs_rejection_bn as kd
    args = kd.parse_args(["--teacher", "resnet34", "--dataset", "cifar10"])
    assert common.teacher_ckpt_or_exit(args.teacher, args.dataset) == str(REPO / "teachers" / "resnet34_cifar10_bn.pt")
    res = kd.main(tiny_args(tiny_data, None, tmp_path, "--teacher", "resnet34", "--dataset", "cifar10", "--steps", "2",
                            "--eval-every", "2", "--batch-size", "8", "--fit-noise-steps", "1",
                            "--calibrate-samples", "8", "--calibrate-steps", "1"))
    a = res["args"]
    assert res["teacher/sha256"] == MANIFEST["resnet34_cifar10_bn.pt"]["sha256"]
    assert (a["student"], a["feature_weight"], a["calibrate_bn"], a["fit_noise"]) == ("resnet18", 30.0, True, True)
    assert res["samples_seen"] == 16 and "eval/acc_calibrated" in res and res["eval/num_images"] == 64
