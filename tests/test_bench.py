"""The benchmark scripts' own logic on tiny settings (the measurements themselves live in results/)."""
import argparse
import json

import pytest
import torch

import batch_align_ln_gn
import common
import cs_rejection_bn
import factors
import gpu_speed
import student_study


def test_gpu_speed_times_both_paths_and_names_the_device(tmp_path):
    out = gpu_speed.main(["--device", "cpu", "--teacher", "resnet20", "--student", "resnet20", "--batch-size", "8",
                          "--steps", "2", "--warmup", "1", "--out", str(tmp_path / "speed.json")])
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["samples_per_s_fp32_eager"] > 0 and saved["samples_per_s_fast"] > 0
    assert saved["speedup"] == out["speedup"] and "cpu (" in saved["provenance"]["device"]


def test_student_study_test_time_statistics(tiny_data, tmp_path):
    x, y = common.load_split("cifar10", "test", tiny_data)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    torch.manual_seed(0)
    bn, gn = common.build_model("resnet20").eval(), common.build_model("resnet20", norm="gn").eval()
    # A BN student: as it is = eval mode, coupled = BatchNorm in batch mode, exactly common.evaluate's two protocols.
    for coupled, protocol in ((False, "running"), (True, "batch")):
        pred = student_study.test_predictions(bn, x, mean, std, coupled, False, 32)
        assert (pred == y).sum().item() / len(y) == common.evaluate(bn, x, y, mean, std, 32, protocol)
    # A GN student: coupled = the same forward under batch alignment, per test batch; the student is left untouched.
    before = {k: v.clone() for k, v in gn.state_dict().items()}
    pred = student_study.test_predictions(gn, x, mean, std, True, False, 32)
    with torch.no_grad(), batch_align_ln_gn.batch_aligned(gn):
        manual = torch.cat([gn(common.normalize(x[i:i + 32], mean, std)).argmax(1) for i in (0, 32)])
    assert torch.equal(pred, manual)
    assert all(torch.equal(before[k], v) for k, v in gn.state_dict().items()) and not gn.training


def test_student_study_reevaluates_finished_runs_from_their_checkpoints(tiny_data, tiny_teacher, tmp_path):
    run_root = tmp_path / "runs" / "bench_student_study_s0" / "bn__resnet20_gn"
    res = cs_rejection_bn.main(["--data-dir", str(tiny_data), "--teacher-ckpt", str(tiny_teacher), "--steps", "2",
                                "--no-fit-noise",  # as bench/student_study.py runs it
                                "--batch-size", "16", "--eval-batch-size", "32", "--student-norm", "gn",
                                "--out-dir", str(run_root)])
    student_study.test_time(argparse.Namespace(seed=0, data_dir=str(tiny_data)), tmp_path, tmp_path / "runs")
    rows = json.loads((tmp_path / "test_time.json").read_text())["rows"]
    assert [(r["teacher"], r["student"]) for r in rows] == [("bn", "resnet20_gn")]  # the other runs: skipped
    assert rows[0]["plain/acc"] == res["eval/acc_running"]  # the final checkpoint is the evaluated student
    assert sum(rows[0]["coupled/pred_hist"]) == 64 and 0.1 <= rows[0]["coupled/pred_max_share"] <= 1


def test_the_constant_student_level_is_the_best_input_free_loss_and_zero_for_a_constant_teacher(tiny_teacher,
                                                                                                monkeypatch):
    monkeypatch.setattr(factors, "TEACHER", ["--teacher-ckpt", str(tiny_teacher)])
    args = {"teacher": "resnet20", "noise_alpha": 0.0, "seed": 0, "batch_size": 64, "teacher_bn": "cs", "tau": 1.0}
    level = factors.constant_student_loss({"args": args, "noise/fitted": None}, samples=256)
    # The same noise and teacher outputs, scored against other constant students: none does better.
    teacher, _ = common.load_teacher("resnet20", tiny_teacher)
    gen = torch.Generator().manual_seed(5_000)
    t = torch.cat([cs_rejection_bn.teacher_forward(teacher, common.sample_noise(64, (3, 32, 32), gen), "cs")
                   for _ in range(4)])
    mean_p = torch.softmax(t, 1).mean(0)
    assert cs_rejection_bn.kd_loss(mean_p.log().expand_as(t), t, 1.0) == pytest.approx(level, rel=1e-5)
    for other in (torch.zeros(10), torch.randn(10), t[0]):
        assert cs_rejection_bn.kd_loss(other.expand_as(t), t, 1.0) > level
    # A teacher whose output does not depend on its input: a constant student fits it exactly.
    blob = common.load_checkpoint(tiny_teacher)
    blob["model"]["linear.weight"].zero_()
    common.save_checkpoint(tiny_teacher.parent / "constant.pt", **blob)
    monkeypatch.setattr(factors, "TEACHER", ["--teacher-ckpt", str(tiny_teacher.parent / "constant.pt")])
    level = factors.constant_student_loss({"args": args, "noise/fitted": None}, samples=256)
    assert level == pytest.approx(0, abs=1e-6)
