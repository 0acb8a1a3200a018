"""Each method script, copied alone with common.py into an empty folder, runs: --help and a 2-step run there."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import common
from conftest import REPO, save_teacher


def run_alone(script, tmp_path, *args):
    """Copy script + common.py into an empty folder and run it there, away from the repository."""
    alone = tmp_path / "alone"
    alone.mkdir(exist_ok=True)
    for name in (script, "common.py"):
        shutil.copy(REPO / name, alone / name)
    out = subprocess.run([sys.executable, script, *args], cwd=alone, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    d = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(3)
    model = common.build_model("resnet20")
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 3, 32, 32))
    return {"bn": save_teacher(d / "bn.pt", model.eval()),
            "gn": save_teacher(d / "gn.pt", common.build_model("resnet20", norm="gn"), norm="gn")}


SMALL = ["--steps", "2", "--batch-size", "16", "--eval-batch-size", "32", "--out-dir", "runs"]
RUNS = {
    "cs_rejection_bn.py": lambda t, d: ["--teacher-ckpt", str(t["bn"]), "--data-dir", str(d), "--fit-noise-steps",
                                        "2", "--calibrate-samples", "16", "--calibrate-steps", "2", *SMALL],
    "batch_align_ln_gn.py": lambda t, d: ["--teacher-ckpt", str(t["gn"]), "--data-dir", str(d), "--probe-samples",
                                          "32", *SMALL],
    "bn_ablation.py": lambda t, d: ["--teacher-ckpt", str(t["bn"]), "--data-dir", str(d), "--sweep", "first-k",
                                    "--k-list", "0", "--distill-k", "0", "--probe-samples", "32", *SMALL],
    "vit_failure_analysis.py": lambda t, d: ["--teacher-ckpts", str(t["bn"]), str(t["gn"]), "--data-dir", str(d),
                                             "--sizes", "16", "32", "--probe-samples", "16", "--batch-size", "8",
                                             "--out-dir", "runs"],
}


@pytest.mark.parametrize("script", list(RUNS))
def test_a_method_script_runs_copied_alone_with_common(script, teachers, tiny_data, tmp_path):
    assert run_alone(script, tmp_path, "--help").stdout.startswith("usage:")
    run_alone(script, tmp_path, *RUNS[script](teachers, tiny_data))
    assert list((tmp_path / "alone" / "runs").glob("*/results.json"))


@pytest.mark.parametrize("script", ["batch_align_ln_gn", "bn_ablation"])
def test_every_distilling_script_takes_a_plain_state_dict_with_its_normalization(script, teachers, tiny_data,
                                                                                  tmp_path):
    import importlib
    module = importlib.import_module(script)
    norm = "gn" if script == "batch_align_ln_gn" else "bn"
    plain = tmp_path / "plain.pt"
    torch.save(common.load_checkpoint(teachers[norm])["model"], plain)  # what most users have: model.state_dict()
    argv = [*RUNS[f"{script}.py"]({**teachers, norm: plain}, tiny_data), "--out-dir", str(tmp_path / "runs")]
    if script == "batch_align_ln_gn":
        argv += ["--teacher-norm", "gn"]
    with pytest.raises(common.InputError, match="plain state_dict.*--teacher-mean and --teacher-std"):
        module.main(argv)
    stats = ["--teacher-mean", "0.4", "0.5", "0.6", "--teacher-std", "0.2", "0.3", "0.4"]
    res = module.main([*argv, *stats])
    model, info = common.load_teacher("resnet20", plain, 10, "cifar10", (0.4, 0.5, 0.6), (0.2, 0.3, 0.4),
                                      norm=norm)
    x, y = common.load_split("cifar10", "test", tiny_data)
    if script == "batch_align_ln_gn":  # the teacher's own accuracy, in the normalization given
        assert res["teacher/acc"] == common.evaluate(model, x, y, info["mean"], info["std"], 32)
    else:  # the point with no CS layer is the teacher as given, in eval mode
        point = next(r for r in res["points"] if r["k"] == 0)
        assert point["teacher/acc"] == common.evaluate(model, x, y, info["mean"], info["std"], 32)
