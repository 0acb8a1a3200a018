"""The benchmark scripts' own logic on tiny settings (the measurements themselves live in results/)."""
import argparse
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import batch_align
import batch_align_ln_gn
import calibrate_bn
import common
import cs_rejection_bn
import factors
import gpu_pair
import gpu_speed
import invert_bf16
import long_run
import report
import student_study
import teacher_on_noise
import train_teacher
from conftest import REPO, crash_after_second_save, tiny_args


def test_gpu_speed_times_both_paths_and_names_the_device(tmp_path, monkeypatch):
    timed, real = [], gpu_speed.timed_steps

    def spy(teacher, student, batch, steps, warmup, device, fast, compiled):
        timed.append((fast, compiled, batch, steps, warmup))
        return real(teacher, student, batch, steps, warmup, device, fast, compiled)
    monkeypatch.setattr(gpu_speed, "timed_steps", spy)
    gpu_speed.main(["--device", "cpu", "--teacher", "resnet20", "--student", "resnet20", "--batch-size", "8",
                    "--steps", "2", "--warmup", "1", "--out", str(tmp_path / "speed.json")])
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert timed == [(False, False, 8, 2, 1), (True, False, 8, 2, 1)]  # the plain fp32 loop, then the fast path
    assert saved["samples_per_s_fp32_eager"] > 0 and saved["samples_per_s_fast"] > 0
    assert saved["speedup"] == pytest.approx(saved["samples_per_s_fast"] / saved["samples_per_s_fp32_eager"])
    assert "cpu (" in saved["provenance"]["device"]


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
    assert sum(rows[0]["coupled/pred_hist"]) == 64
    # coupled: the final student with batch alignment at test time, recomputed here from its checkpoint
    run = next(run_root.glob("*/checkpoint.pt"))
    student = common.build_model("resnet20", 10, "gn")
    common.load_state_strict(student, common.load_checkpoint(run)["student"], run)
    teacher = common.load_checkpoint(tiny_teacher)
    x, y = common.load_split("cifar10", "test", tiny_data)
    pred = student_study.test_predictions(student, x, teacher["mean"], teacher["std"], True, res["args"]["bf16"], 32)
    assert rows[0]["coupled/acc"] == (pred == y).sum().item() / len(y)
    assert rows[0]["coupled/pred_hist"] == torch.bincount(pred, minlength=10).tolist()


def test_the_constant_student_level_is_the_best_input_free_loss_and_zero_for_a_constant_teacher(tiny_teacher):
    args = {"teacher": "resnet20", "dataset": "cifar10", "noise_alpha": 0.0, "seed": 0, "batch_size": 64,
            "teacher_bn": "cs", "tau": 1.0}
    result = {"args": args, "noise/fitted": None}
    level = factors.constant_student_loss(result, ["--teacher-ckpt", str(tiny_teacher)], samples=256)
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
    level = factors.constant_student_loss(result, ["--teacher-ckpt", str(tiny_teacher.parent / "constant.pt")], 256)
    assert level == pytest.approx(0, abs=1e-6)


def test_the_constant_student_level_of_the_logit_mse_is_that_of_the_teachers_mean_logits(tiny_teacher):
    args = {"teacher": "resnet20", "dataset": "cifar10", "noise_alpha": 0.0, "seed": 0, "batch_size": 64,
            "teacher_bn": "cs", "tau": 1.0, "loss": "mse"}
    level = factors.constant_student_loss({"args": args, "noise/fitted": None}, ["--teacher-ckpt", str(tiny_teacher)],
                                          samples=256)
    teacher, _ = common.load_teacher("resnet20", tiny_teacher)
    gen = torch.Generator().manual_seed(5_000)
    t = torch.cat([cs_rejection_bn.teacher_forward(teacher, common.sample_noise(64, (3, 32, 32), gen), "cs")
                   for _ in range(4)])
    assert cs_rejection_bn.logit_mse_loss(t.mean(0).expand_as(t), t) == pytest.approx(level, rel=1e-5)
    for other in (torch.zeros(10), torch.randn(10), t[0], t.mean(0) + torch.randn(10) * 0.1):
        assert cs_rejection_bn.logit_mse_loss(other.expand_as(t), t) > level


def test_a_teacher_arm_trains_its_short_teacher_once_and_the_others_use_theirs(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(factors, "TRAINED", tmp_path / "teachers")
    calls = []
    real_run = factors.subprocess.run
    monkeypatch.setattr(factors.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(
        [*cmd, "--batch-size", "32"], **kw))
    flags = factors.teacher_flags("teacher_e1", str(tiny_data))
    assert flags == ["--teacher", "resnet20", "--teacher-ckpt", str(tmp_path / "teachers" / "resnet20_e1_w0.1.pt")]
    blob = common.load_checkpoint(flags[-1])
    assert blob["args"]["epochs"] == 1 and blob["args"]["label_smoothing"] == 0.1  # the shipped recipe, 1 epoch
    assert blob["args"]["warmup_epochs"] == 0.1  # a tenth of the run, as the shipped teacher's 2 of 20 epochs
    assert factors.teacher_flags("teacher_e1", str(tiny_data)) == flags and len(calls) == 1  # trained once
    assert factors.teacher_flags("teacher_e20", str(tiny_data)) == ["--teacher", "resnet20"]  # the shipped one
    assert factors.teacher_flags("centre", str(tiny_data)) == factors.TEACHER and len(calls) == 1
    adamw = factors.TEACHER_RECIPES["teacher_e5_adamw"]
    monkeypatch.setitem(factors.TEACHER_RECIPES, "teacher_e5_adamw", (1, *adamw[1:]))
    flags = factors.teacher_flags("teacher_e5_adamw", str(tiny_data))  # a recipe arm, cut to 1 epoch here
    assert flags[-1] == str(tmp_path / "teachers" / "resnet20_e1_w0.1_adamw.pt") and len(calls) == 2
    recipe = common.load_checkpoint(flags[-1])["args"]
    assert (recipe["optimizer"], recipe["lr"], recipe["weight_decay"], recipe["label_smoothing"]) == (
        "adamw", 1e-3, 0.05, 0.1)  # the arm's changes, the rest of the shipped recipe
    assert {a: factors.TEACHER_RECIPES[a][1] for a in ("teacher_e5_ls0", "teacher_e5_wd0")} == {
        "teacher_e5_ls0": ["--label-smoothing", "0"], "teacher_e5_wd0": ["--weight-decay", "0"]}
    assert cs_rejection_bn.parse_args(factors.ARMS["student_r18"][0]).student == "resnet18"


def test_the_report_names_the_factor_arms_of_the_bench_in_its_order_and_says_true_sizes():
    import report
    assert [arm for arm, _, _ in report.FACTORS] == list(factors.ARMS)
    size = lambda name: sum(p.numel() for p in common.build_model(name).parameters())
    assert round(size("resnet18") / 1e6, 1) == 11.2 and round(size("resnet18") / size("resnet20")) == 41
    assert all("11.2M parameters, 41x ResNet-20's" in label for label in (dict(
        (a, x) for a, _, x in report.FACTORS)["student_r18"], factors.ARMS["student_r18"][1]))


def test_the_factor_table_has_a_row_per_finished_arm_and_seed_and_says_what_is_missing(tmp_results):
    import report
    assert "run `python bench/factors.py`" in report.factors_block()
    (tmp_results / "factors").mkdir(parents=True)
    for arm, seed, acc in (("centre", 0, 0.2), ("centre", 1, 0.25), ("white", 0, 0.1)):
        curve = [{"samples_seen": n, "eval/acc_running": acc * n / 64_000, "eval/acc_batchstats": acc}
                 for n in (32_000, 64_000)]
        result = {"curve": curve, "args": {"seed": seed}, "teacher/acc": 0.9173, "provenance": {"device": "cpu (x)"},
                  "train_loss_curve": [[n, 1.5] for n in range(2_560, 64_001, 2_560)],
                  "bench/kd_loss_constant_student": 1.65}
        (tmp_results / "factors" / f"{arm}__s{seed}.json").write_text(json.dumps(result))
    block = report.factors_block()
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert [row.split(" | ")[0] for row in rows] == ["| `centre`", "| `centre`", "| `white`"]  # FACTORS' order
    assert "| 91.7 | 1 | 12.5 / 25.0 | 25.0 / 25.0 | 1.50 | 1.65 |" in rows[1]
    assert "32k / 64k noise samples" in block
    report.factors_figure(tmp_results / "factors.png")
    assert (tmp_results / "factors.png").stat().st_size > 10_000


def test_teacher_on_noise_bn_modes_are_cs_and_eval_mode_and_leave_the_teacher_untouched(tiny_teacher):
    teacher, _ = common.load_teacher("resnet20", tiny_teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    z = common.sample_noise(32, (3, 32, 32), torch.Generator().manual_seed(0))
    with torch.no_grad():
        with teacher_on_noise.bn_statistics(teacher, "cs"):
            cs = teacher(z)
        with teacher_on_noise.bn_statistics(teacher, "running"):
            running = teacher(z)
        with teacher_on_noise.bn_statistics(teacher, "bm_rv"):
            mixed = teacher(z)
        with teacher_on_noise.bn_statistics(teacher, "cs_last7"):
            last7 = teacher(z)
        assert torch.allclose(cs, cs_rejection_bn.teacher_forward(teacher, z, "cs"), atol=1e-4)
        assert torch.allclose(last7, cs_rejection_bn.teacher_forward(teacher, z, "cs", 7), atol=1e-4)
        assert not torch.allclose(last7, cs, atol=1e-3) and not torch.allclose(last7, running, atol=1e-3)
        assert torch.allclose(running, teacher(z), atol=1e-5)  # teacher(z) outside: plain eval mode
    assert not torch.allclose(mixed, cs, atol=1e-3) and not torch.allclose(mixed, running, atol=1e-3)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()) and not teacher.training


def test_teacher_on_noise_measures_are_zero_for_a_teacher_that_ignores_its_input(tiny_teacher, tmp_path):
    teacher, _ = common.load_teacher("resnet20", tiny_teacher)
    gen = torch.Generator().manual_seed(0)
    batches = [common.sample_noise(64, (3, 32, 32), gen) for _ in range(2)]
    m = teacher_on_noise.answers(teacher, batches, "cs", 0.5, gen)
    assert m["input_free_level"] > 0 and m["roughness"] > 0 and 0 <= m["label_entropy"] <= 1
    assert teacher_on_noise.answers(teacher, batches, "cs", 0.0, gen)["roughness"] == pytest.approx(0, abs=1e-6)
    teacher.linear.weight.zero_()  # the logits are the bias: the same answer for every input
    m = teacher_on_noise.answers(teacher, batches, "cs", 0.5, gen)
    assert m["input_free_level"] == pytest.approx(0, abs=1e-6) and m["roughness"] == pytest.approx(0, abs=1e-6)
    assert m["label_entropy"] == 0 and m["label_max_share"] == 1


def test_teacher_on_noise_writes_every_mode_for_every_teacher_it_finds(tiny_data, tiny_teacher, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(teacher_on_noise, "TEACHERS", [("tiny", "resnet20", tiny_teacher),
                                                       ("gone", "resnet20", tmp_path / "missing.pt")])
    out = tmp_path / "t.json"
    teacher_on_noise.main(["--data-dir", str(tiny_data), "--fit-steps", "2", "--batches", "1", "--batch-size", "16",
                           "--out", str(out)])
    saved = json.loads(out.read_text())
    [row] = saved["rows"]  # the missing teacher is skipped
    assert row["teacher"] == "tiny" and not row["checkpoint"].startswith("/")
    keys = {f"{noise}_{mode}" for noise in ("white", "fitted") for mode in teacher_on_noise.MODES}
    assert keys | {"images_running"} <= set(row)
    assert all(row[k]["roughness"] >= 0 and row[k]["input_free_level"] >= 0 for k in keys)


def test_long_run_snapshots_an_unfinished_arm_then_resumes_it_to_the_finished_result(tiny_data, tmp_path, monkeypatch):
    flags = ["--data-dir", str(tiny_data), "--arms", "prior", "--samples", "60", "--batch-size", "16",
             "--eval-every", "1", "--ckpt-every", "1", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path)]
    budget = lambda arm, samples: long_run.argv_of(arm, argparse.Namespace(
        samples=samples, batch_size=16, data_dir="d", seed=0, eval_every=1, ckpt_every=1))[-8:]
    assert budget("prior", 60) == ["--batch-size", "16", "--steps", "4", "--eval-every", "1", "--ckpt-every", "1"]
    assert budget("ours_1m", None)[3] == str(62_500) and budget("ours", None)[3] == str(625_000)
    own = lambda arm: long_run.argv_of(arm, argparse.Namespace(samples=None, batch_size=None, data_dir="d", seed=0,
                                                               eval_every=None, ckpt_every=None))[-8:]
    assert own("ours_1m") == ["--batch-size", "32", "--steps", "31250", "--eval-every", "4000", "--ckpt-every", "800"]
    assert own("prior") == ["--batch-size", "256", "--steps", "39063", "--eval-every", "500", "--ckpt-every", "100"]
    seed = lambda arm: cs_rejection_bn.parse_args(long_run.argv_of(arm, argparse.Namespace(
        samples=None, batch_size=None, data_dir="d", seed=0, eval_every=None, ckpt_every=None))).seed
    arms = ("ours_1m", "ours_1m_s1", "ours_512k", "ours_512k_s1", "feat_512k", "feat_512k_s1", "feat10_10m",
            "default_10m", "aka20_1m", "aka20_1m_s1")
    assert [seed(a) for a in arms] == [0, 1, 0, 1, 0, 1, 0, 0, 0, 1]  # own seed wins
    parsed = lambda arm: cs_rejection_bn.parse_args(long_run.argv_of(arm, argparse.Namespace(
        samples=None, batch_size=None, data_dir="d", seed=0, eval_every=None, ckpt_every=None)))
    assert [parsed(a).feature_weight for a in arms] == [0, 0, 0, 0, 1, 1, 10, 30, 30, 30]  # the logits alone unless
    assert own("feat10_10m")[3] == own("default_10m")[3] == str(312_500)  # 10M samples in batches of 32
    assert own("aka20_1m")[3] == str(31_250)  # 1M
    shared = REPO.parent / "shared" / "teachers" / "akamaster_resnet20-12fca82f.th"  # the teacher users bring
    assert [parsed(a).teacher_ckpt and (REPO / parsed(a).teacher_ckpt).resolve() for a in arms] == [None] * 8 + [
        shared.resolve()] * 2  # named relative to the repository, where the benchmark runs
    with monkeypatch.context() as m:
        crash_after_second_save(m)
        with pytest.raises(SystemExit, match="130"):  # the interrupt, as cs_rejection_bn reports it
            long_run.main(flags)
    with monkeypatch.context() as m:  # the calibrations themselves are tested with --calibrate-bn / calibrate_bn.py
        m.setattr(cs_rejection_bn, "fit_noise", lambda teacher, shape, steps, gen: ({}, None))  # white noise
        made, calls, real_calibrate = [], [], cs_rejection_bn.calibrate_bn
        m.setattr(cs_rejection_bn, "invert_teacher_inputs",
                  lambda teacher, shape, n, steps, gen, params: made.append(common.sample_noise(16, shape, gen)) or made)
        m.setattr(cs_rejection_bn, "calibrate_bn", lambda model, batches: calls.append(
            (batches, real_calibrate(model, batches))) or calls[-1][1])
        long_run.main([*flags, "--snapshot", "--calibrate"])
    cal = json.loads((tmp_path / "prior.json").read_text())["calibrated"]
    ck_path = next((tmp_path / "runs" / "prior").glob("*/checkpoint.pt"))
    student = common.build_model("resnet20")
    student.load_state_dict(common.load_checkpoint(ck_path)["student"])
    x, y = common.load_split("cifar10", "test", tiny_data)
    teacher_info = common.load_teacher("resnet20", common.teacher_ckpt_or_exit("resnet20", "cifar10"))[1]
    as_trained = common.evaluate(student, x, y, teacher_info["mean"], teacher_info["std"], 256)
    assert cal["samples_seen"] == 32 and cal["acc_running"] == as_trained  # the student of the checkpoint, as it is
    assert cal["trained_on"] == "white noise"
    inverted = next(model for batches, model in calls if batches is made)  # the student re-estimated on those inputs
    assert cal["acc_inverted"] == common.evaluate(inverted, x, y, teacher_info["mean"], teacher_info["std"], 256)
    with pytest.raises(SystemExit):
        long_run.main([*flags, "--calibrate"])  # a finished arm is calibrated by bench/calibrate_bn.py
    with monkeypatch.context() as m:
        m.setattr(torch, "get_num_threads", lambda: 99)  # the snapshot's process is not where the run trained
        long_run.main([*flags, "--snapshot"])
    part = json.loads((tmp_path / "prior.json").read_text())
    assert part["provenance"]["device"] == common.device_name("cpu")
    assert part["provenance"]["stretches"] == common.load_checkpoint(ck_path)["stretches"]
    assert part["finished"] is False and part["samples_seen"] == 32 and part["samples_budget"] == 64
    assert [row["samples_seen"] for row in part["curve"]] == [16, 32] and part["args"]["balance"] == "none"
    packed = tmp_path / "resume" / "prior.tar.gz"  # the snapshot packed the run folder, to be committed with it
    with tarfile.open(packed) as tar:
        [folder] = {Path(name).parts[0] for name in tar.getnames()}
        assert sorted(tar.getnames()) == [folder, *(f"{folder}/{f}" for f in ("args.json", "checkpoint.pt",
                                                                                "metrics.jsonl"))]
        assert json.loads(tar.extractfile(f"{folder}/args.json").read())["out_dir"] == "prior"  # no machine's path
    (tmp_path / "runs").rename(tmp_path / "elsewhere")  # the run folder stayed on another machine
    packed.rename(tmp_path / "prior.tar.gz")  # and its pack was not committed
    with pytest.raises(common.InputError, match="curve to 32 samples, but neither .* nor .* has a checkpoint to "
                                                "resume it from: pass --restart"):
        long_run.main(flags)
    assert json.loads((tmp_path / "prior.json").read_text()) == part  # the committed curve is kept
    (tmp_path / "prior.tar.gz").rename(packed)
    long_run.main(flags)  # resumes the packed run where it stopped, replaces the snapshot with its results.json
    done = json.loads((tmp_path / "prior.json").read_text())
    assert "finished" not in done and done["samples_seen"] == 64 and done["provenance"]["resumed_at_steps"] == [2]
    assert done["args"]["calibrate_bn"] is False  # a study's student as trained: bench/calibrate_bn.py calibrates it
    assert done["curve"][:2] == part["curve"] and len(done["curve"]) == 4
    assert done["train_loss_curve"][0][0] < 32  # the log from before the stop came with the pack
    assert not packed.exists()  # finished: its results replace the pack
    long_run.main([*flags, "--snapshot"])  # a finished arm is left alone
    assert json.loads((tmp_path / "prior.json").read_text()) == done
    common.write_json(tmp_path / "prior.json", part)  # unfinished again, its checkpoint gone: --restart runs it anew
    shutil.rmtree(tmp_path / "runs")
    long_run.main([*flags, "--restart"])
    anew = json.loads((tmp_path / "prior.json").read_text())
    assert "finished" not in anew and anew["samples_seen"] == 64 and len(anew["curve"]) == 4
    assert anew["provenance"]["resumed_at_steps"] == []
    with tarfile.open(packed, "w:gz") as tar:  # a pack that is not a run folder: one line, not a traceback
        tar.add(tiny_data, arcname="data")
    common.write_json(tmp_path / "prior.json", part)
    shutil.rmtree(tmp_path / "runs")
    with pytest.raises(common.InputError, match="is not a packed run folder"):
        long_run.main(flags)


def test_calibrate_bn_only_recomputes_the_named_runs_and_keeps_the_other_rows(tiny_data, tiny_teacher, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(calibrate_bn, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(calibrate_bn, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(calibrate_bn, "REPO", tmp_path)  # what a default run's --out-dir is relative to
    made = []  # the inversion itself is tested with --calibrate-bn; here a small batch of noise stands in for it

    def invert(teacher, shape, n, steps, gen, params):
        made.append((n, steps))
        return [common.sample_noise(16, shape, gen, **params)]
    monkeypatch.setattr(cs_rejection_bn, "invert_teacher_inputs", invert)
    done = cs_rejection_bn.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "runs" / "bench_long_run" / "arm",
                                          "--no-bf16", "--no-calibrate-bn"))  # fp32, as calibrate_bn evaluates
    (tmp_path / "results" / "long_run").mkdir(parents=True)
    common.write_json(tmp_path / "results" / "long_run" / "arm.json", done)
    common.write_json(tmp_path / "results" / "long_run" / "going.json", {**done, "finished": False})
    # a default run copied to results/: its run folder is its --out-dir
    common.write_json(tmp_path / "results" / "default_run_x.json",
                      {**done, "args": {**done["args"], "out_dir": "runs/bench_long_run/arm"}})
    out = tmp_path / "results" / "calibrate_bn.json"
    old = {"run": "old", "acc_running": 0.5}
    common.write_json(out, {"rows": [old], "batches": 1})
    with pytest.raises(SystemExit, match="--batches 1"):  # the kept rows were calibrated on 1 batch
        calibrate_bn.main(["--data-dir", str(tiny_data), "--only", "arm"])
    with pytest.raises(SystemExit, match="going"):  # an unfinished run has no final student yet
        calibrate_bn.main(["--data-dir", str(tiny_data), "--batches", "1", "--only", "going"])
    calibrate_bn.main(["--data-dir", str(tiny_data), "--batches", "1", "--only", "arm"])
    rows = json.loads(out.read_text())["rows"]
    assert rows[0] == {**old, "study": "noise_fit"} and [r["run"] for r in rows] == ["old", "arm"]
    new = rows[1]
    assert new["study"] == "long_run" and new["trained_on"] == "fitted noise" and new["samples_seen"] == 96
    assert new["acc_running"] == pytest.approx(done["eval/acc_running"])
    assert new["acc_batchstats"] == pytest.approx(done["eval/acc_batchstats"])
    assert made == [(512, 100)]  # what --calibrate-bn does by default
    calibrate_bn.main(["--data-dir", str(tiny_data), "--batches", "1", "--only", "default_run_x"])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["run"], r["study"]) for r in rows] == [("old", "noise_fit"), ("arm", "long_run"),
                                                      ("default_run_x", "default_run")]
    assert rows[2]["acc_inverted"] == new["acc_inverted"]  # the same student, calibrated the same way
    # each computed row says where it was computed, and keeps that when a later --only computes other rows; the row
    # kept from before rows recorded it says nothing
    assert "provenance" not in rows[0] and rows[1]["provenance"] == new["provenance"]
    assert rows[2]["provenance"]["device"].startswith("cpu (") and rows[2]["provenance"]["wall_time_s"] >= 0


def test_calibrate_bn_calibrates_the_run_that_made_the_result_not_another_in_its_folder(tiny_data, tiny_teacher,
                                                                                        tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate_bn, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(calibrate_bn, "REPO", tmp_path)
    monkeypatch.setattr(cs_rejection_bn, "invert_teacher_inputs",
                        lambda teacher, shape, n, steps, gen, params: [common.sample_noise(16, shape, gen, **params)])
    root = tmp_path / "runs"  # a default run's --out-dir holds every run made with the same flag
    ours = cs_rejection_bn.main(tiny_args(tiny_data, tiny_teacher, root, "--no-bf16", "--no-calibrate-bn"))
    cs_rejection_bn.main(tiny_args(tiny_data, tiny_teacher, root, "--no-bf16", "--no-calibrate-bn", "--seed", "1"))
    (tmp_path / "results").mkdir()
    common.write_json(tmp_path / "results" / "default_run_x.json", {**ours, "args": {**ours["args"], "out_dir": "runs"}})
    assert sorted(p.name.split("__")[3] for p in root.iterdir()) == ["s0", "s1"]  # ours is not the last one listed
    calibrate_bn.main(["--data-dir", str(tiny_data), "--batches", "1"])
    row = json.loads((tmp_path / "results" / "calibrate_bn.json").read_text())["rows"][0]
    assert row["seed"] == 0 and row["acc_running"] == pytest.approx(ours["eval/acc_running"])


def test_bench_runs_refuse_to_resume_an_unfinished_run_of_other_settings(tiny_data, tiny_teacher, tmp_path,
                                                                         monkeypatch, capsys):
    import _runs
    real_save, real_bf16 = common.save_checkpoint, common.bf16_supported
    crash_after_second_save(monkeypatch)
    argv = tiny_args(tiny_data, tiny_teacher, tmp_path / "unused", "--no-calibrate-bn", "--feature-weight", "0")
    with pytest.raises(SystemExit):
        _runs.run_or_resume(cs_rejection_bn, argv, tmp_path / "arm", tmp_path / "arm.json")
    with pytest.raises(common.InputError, match="other settings .*steps: 6 there, 9 now"):
        _runs.run_or_resume(cs_rejection_bn, [*argv, "--steps", "9"], tmp_path / "arm", tmp_path / "arm.json")
    monkeypatch.setattr(common, "save_checkpoint", real_save)
    monkeypatch.setattr(common, "bf16_supported", lambda device: not real_bf16(device))  # the next machine differs
    _runs.run_or_resume(cs_rejection_bn, argv, tmp_path / "arm", tmp_path / "arm.json")  # where it runs, not what
    assert json.loads((tmp_path / "arm.json").read_text())["provenance"]["resumed_at_steps"] == [4]
    with pytest.raises(SystemExit):
        long_run.main(["--data-dir", str(tiny_data), "--arms", "prior", "--samples", "60", "--runs-dir",
                       str(tmp_path / "r")])
    err = capsys.readouterr().err  # the committed results/long_run/ is never overwritten by a changed arm
    assert "--samples change the arms: give --out and --runs-dir of their own" in err


def test_provenance_of_a_run_made_elsewhere_or_without_a_wall_time_record(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert common.device_name("cuda") == "cuda (not on this machine)"
    for n, threads in ((1, "1 thread)"), (2, "2 threads)")):
        monkeypatch.setattr(torch, "get_num_threads", lambda: n)
        assert common.device_name("cpu").endswith(threads)
    prov = common.provenance("cuda", None, [5])
    assert prov["wall_time_s"] is None and prov["process_wall_time_s"] is None and prov["resumed_at_steps"] == [5]


def test_attach_loss_curve_adds_the_logit_term_where_the_run_logged_it(tmp_path):
    import _runs
    curve = [{"step": 2, "samples_seen": 8}]
    for name, extra in (("feat", {"train/logit_loss": 0.5}), ("logits", {})):
        run = tmp_path / name / "run1"
        run.mkdir(parents=True)
        common.write_json(run / "results.json", {"curve": curve, "args": {"batch_size": 4}})
        log = common.MetricsLog(run / "metrics.jsonl")
        log.log(1, **{"train/loss": 2.0, **extra})
        log.log(2, **{"eval/acc_running": 0.1})
        target = tmp_path / f"{name}.json"
        common.write_json(target, {"curve": curve, "args": {"batch_size": 4}})
        _runs.attach_loss_curve(target, tmp_path / name)
        result = json.loads(target.read_text())
        assert result["train_loss_curve"] == [[4, 2.0]]
        assert result.get("train_logit_loss_curve") == ([[4, 0.5]] if extra else None)


def test_every_noise_fit_arm_parses_and_has_its_row_in_the_readme_table():
    import noise_fit
    import report
    from _runs import LOGITS_ONLY
    rows = {(teacher, arm) for teacher, arm, *_ in report.NOISE_FIT_ROWS}
    parse = lambda arm: vars(cs_rejection_bn.parse_args([*LOGITS_ONLY, *noise_fit.ARMS[arm]]))
    for arm in noise_fit.ARMS:
        parse(arm)  # a typo in an arm's flags fails here, not hours into a queue
        assert any(a == arm for _, a in rows), f"arm {arm} has no row in report.NOISE_FIT_ROWS"
    # the balance arms change the default of then (weight 10) in the balancing and the teacher's BN mode alone
    base = parse("default_feat10")
    for arm, changed in [("default_feat10_none", {"balance": "none"}),
                         ("default_feat10_reweight", {"balance": "reweight"}),
                         ("default_feat10_running", {"balance": "none", "teacher_bn": "running"})]:
        assert {k: v for k, v in parse(arm).items() if base[k] != v} == changed, arm


def test_gpu_pair_trains_the_missing_teacher_runs_both_arms_once_and_times_the_pair(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"  # 16 training images: the teacher's recipe, at a batch of 16, trains one step an epoch
    data.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(data / f"cifar10_{split}.npz", x=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
                 y=np.arange(16) % 10)
    teacher, out = tmp_path / "r34.pt", tmp_path / "results"
    argv = ["--data-dir", str(data), "--device", "cpu", "--samples", "32", "--evals", "2", "--teacher-ckpt",
            str(teacher), "--teacher-args", "--epochs 1 --batch-size 16", "--speed-steps", "1",
            "--speed-batch-size", "2", "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
            "--batch-size", "8", "--eval-batch-size", "16", "--fit-noise-steps", "1", "--calibrate-samples", "8",
            "--calibrate-steps", "1"]  # the last two lines: flags for cs_rejection_bn.py
    recipe = train_teacher.parse_args([*gpu_pair.TEACHER, "--out", str(tmp_path / "unused.pt")])
    assert (recipe.model, recipe.epochs, recipe.crop, recipe.half) == ("resnet34", 30, "image", True)  # README's
    gpu_pair.main(argv)
    blob = common.load_checkpoint(teacher)
    assert blob["arch"] == "resnet34" and blob["args"]["crop"] == "image" and blob["args"]["epochs"] == 1
    assert blob["model"]["fc.weight"].dtype == torch.float16  # --half: the file to commit
    prior, ours = (json.loads((out / f"{arm}.json").read_text()) for arm in ("prior", "ours"))
    for r in (prior, ours):
        assert (r["args"]["teacher"], r["args"]["student"], r["args"]["steps"]) == ("resnet34", "resnet18", 4)
        assert r["teacher/sha256"] == common.sha256_of(teacher) and r["train_loss_curve"]
    assert (prior["args"]["fit_noise"], prior["args"]["balance"], prior["args"]["lr"]) == (False, "none", 1e-3)
    assert (prior["args"]["feature_weight"], prior["args"]["calibrate_bn"]) == (0, False)
    defaults = vars(cs_rejection_bn.parse_args([]))
    assert all(ours["args"][k] == defaults[k] for k in ("fit_noise", "balance", "lr", "schedule", "tau"))
    assert ours["args"]["feature_weight"] == 30  # the default where the stage outputs' shapes match, as here
    assert "eval/acc_calibrated" in ours and "eval/acc_calibrated" not in prior
    assert json.loads((out / "gpu_speed.json").read_text())["teacher"] == "resnet34"
    # A second call: the teacher exists and both arms are done, so nothing is trained again.
    mtimes = {p: p.stat().st_mtime_ns for p in (teacher, out / "prior.json", out / "ours.json")}
    capsys.readouterr()
    gpu_pair.main(argv)
    assert "prior.json: done already" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    # An arm stopped mid-run (the machine taken back) continues from its checkpoint at the next call.
    (out / "prior.json").unlink()
    for d in (tmp_path / "runs" / "prior").iterdir():
        (d / "results.json").unlink()  # as if the first run had stopped after its last checkpoint
    gpu_pair.main([*argv, "--arms", "prior"])
    again = json.loads((out / "prior.json").read_text())
    assert again["provenance"]["resumed_at_steps"] == [4] and again["curve"] == prior["curve"]


def test_the_long_run_table_shows_the_calibrated_student_of_finished_and_running_arms(tmp_results):
    (tmp_results / "long_run").mkdir(parents=True)
    curve = lambda *points: [{"samples_seen": n, "eval/acc_running": 0.5, "eval/acc_batchstats": 0.8} for n in points]
    run = lambda steps, seen, **extra: {"args": {"steps": steps, "batch_size": 32, "seed": 0}, "teacher/acc": 0.9,
                                        "curve": curve(*range(128_000, seen + 1, 128_000)), "samples_seen": seen,
                                        "provenance": {"device": "cpu (X)"}, **extra}
    write = lambda name, r: (tmp_results / "long_run" / f"{name}.json").write_text(json.dumps(r))
    write("ours_512k", run(16_000, 512_000))
    write("feat10_10m", run(312_500, 256_000, finished=False, calibrated={"samples_seen": 256_000, "acc_inverted": 0.8}))
    write("ours", run(312_500, 128_000, finished=False))  # a snapshot made without --calibrate
    brought = run(31_250, 1_000_000, **{"teacher/acc": 0.917})
    write("aka20_1m", {**brought, "args": {**brought["args"], "teacher_ckpt": "../shared/teachers/aka20.th"}})
    (tmp_results / "calibrate_bn.json").write_text(json.dumps({"rows": [
        {"run": "ours_512k", "study": "long_run", "samples_seen": 512_000, "acc_inverted": 0.7},
        {"run": "ours_512k", "study": "noise_fit", "samples_seen": 512_000, "acc_inverted": 0.1}]}))  # another study
    rows = {line.split(" | ")[0][3:-1]: line.split(" | ") for line in report.long_run_block().splitlines()
            if line.startswith("| `")}
    column = lambda arm: rows[arm][-2]  # "calibrated", before the KD loss
    assert (column("ours_512k"), column("feat10_10m"), column("ours"), column("prior")) == (
        "70.0", "80.0 (at 256k)", "", "")
    # the header names the shipped teacher's accuracy, and the teacher of the rows that brought another
    assert ("the shipped ResNet-20 (90.0%) -> ResNet-20 (the rows `aka20_1m`: the teacher aka20.th, 91.7%), "
            in report.long_run_block())


def test_the_pair_lines_say_pending_until_their_results_exist_and_then_show_them(tmp_results):
    """The Quick start's line for the ResNet-34 pair and the GPU table: 'pending' (not a number) without results."""
    assert "pending" in report.pair_run_block() and "Pending" in report.gpu_pair_block()
    assert not any(c.isdigit() for c in report.gpu_pair_block())
    run = lambda batch, minutes, device, **extra: {
        "args": {"teacher": "resnet34", "student": "resnet18", "batch_size": batch, "steps": 1000}, "teacher/acc": 0.93,
        "samples_seen": 32_000, "samples_per_s": 8.0, "eval/acc_running": 0.4, "eval/acc_batchstats": 0.7,
        "provenance": {"wall_time_s": 60 * minutes, "device": device}, **extra}
    (tmp_results / "gpu_pair").mkdir(parents=True)
    (tmp_results / "default_run_r34_32k.json").write_text(json.dumps(run(32, 61, "cpu (EPYC, 2 threads)",
                                                                         **{"eval/acc_calibrated": 0.75})))
    (tmp_results / "gpu_pair" / "prior.json").write_text(json.dumps(run(256, 4, "cuda (NVIDIA H200)")))
    line, gpu = report.pair_run_block(), report.gpu_pair_block()
    assert "With `--steps 1000` (32k noise samples, 1/8 of the default 256k) it took 61 minutes on EPYC, 2 threads, " \
        "fp32 (counted from the first step: the setup before it, the noise fit above all, is not in " \
        "that time)" in line and "75.0%" in line  # a run without setup_s
    assert ("Its training steps ran at 8 noise samples per second: the default 256k samples would train for about 8.9 "
            "hours there, the evaluations and the calibration on top." in line)
    assert "pending: no GPU run" in line
    r34 = run(32, 61, "cpu (Xeon, 2 threads)", **{"eval/acc_calibrated": 0.75})
    r34["provenance"]["setup_s"], r34["args"]["bf16"] = 420, True
    (tmp_results / "default_run_r34_32k.json").write_text(json.dumps(r34))
    assert "61 minutes on Xeon, 2 threads, bf16 (counted from the first step: the setup before it took 7 minutes " \
        "more)" in report.pair_run_block()
    rows = [r for r in gpu.splitlines() if r.startswith("| the prior")]
    assert len(rows) == 1 and "**40.0%**" in rows[0] and "NVIDIA H200" in rows[0]  # deploys as trained
    assert "Pending: the arm `ours`." in gpu and "gpu_speed" not in gpu
    (tmp_results / "gpu_pair" / "ours.json").write_text(json.dumps(run(256, 7, "cuda (NVIDIA H200)",
                                                                      **{"eval/acc_calibrated": 0.85})))
    (tmp_results / "gpu_pair" / "gpu_speed.json").write_text(json.dumps({
        "batch_size": 256, "samples_per_s_fp32_eager": 9000.0, "samples_per_s_fast": 27000.0, "speedup": 3.0,
        "compile": False, "provenance": {"device": "cuda (NVIDIA H200)"}}))
    line, gpu = report.pair_run_block(), report.gpu_pair_block()
    assert "7 minutes on NVIDIA H200" in line and "Pending" not in gpu and "**85.0%**" in gpu
    assert "9000 samples/s in fp32 eager mode, 27000 with bf16 and channels_last (3.0x)" in gpu


def test_the_default_budget_the_report_names_is_the_scripts():
    default = cs_rejection_bn.parse_args([])
    assert report.DEFAULT_BUDGET == default.steps * default.batch_size


def test_the_default_runs_sentence_says_whether_its_time_includes_the_setup(tmp_results):
    tmp_results.mkdir()
    r = {"args": {"data_dir": "data", "bf16": True}, "teacher/acc": 0.9, "eval/acc_calibrated": 0.8,
         "eval/acc_running": 0.5, "eval/acc_batchstats": 0.8, "eval/batch_size": 256, "samples_seen": 256_000,
         "provenance": {"wall_time_s": 720, "device": "cpu (X, 2 threads)"}}
    (tmp_results / "default_run.json").write_text(json.dumps(r))
    assert report.default_run_block().endswith(
        "in 12 minutes on cpu (X, 2 threads), bf16 (`results/default_run.json`), counted from the first step: the "
        "setup before it, the noise fit above all, is not in that time.")
    r["provenance"]["setup_s"] = 90.0
    (tmp_results / "default_run.json").write_text(json.dumps(r))
    assert report.default_run_block().endswith("counted from the first step: the setup before it took 2 minutes more.")


def test_invert_bf16_repeats_the_runs_own_calibration_in_fp32_and_merges_its_rows(tiny_data, tiny_teacher, tmp_path):
    done = cs_rejection_bn.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "runs", "--no-bf16"))  # fp32 throughout
    folder = next((tmp_path / "runs").glob("*/checkpoint.pt")).parent
    out = tmp_path / "invert.json"
    invert_bf16.main(["--data-dir", str(tiny_data), "--runs", str(folder), "--out", str(out)])
    fp32, bf16 = json.loads(out.read_text())["rows"]
    assert (fp32["precision"], bf16["precision"], fp32["timed_only"]) == ("fp32", "bf16", False)
    assert (fp32["seed"], fp32["samples"], fp32["steps"]) == (0, 16, 2)  # the run's seed, --calibrate-samples/-steps
    assert fp32["acc_calibrated"] == fp32["acc_calibrated_by_the_run"] == done["eval/acc_calibrated"]
    assert bf16["acc_calibrated_by_the_run_fp32"] == done["eval/acc_calibrated"]  # its student_calibrated.pt, fp32
    assert fp32["acc_as_trained"] == bf16["acc_as_trained"] == done["eval/acc_running"]
    assert fp32["s_per_step"] > 0 and bf16["s_per_step"] > 0 and fp32["bn_loss"] != bf16["bn_loss"]
    invert_bf16.main(["--data-dir", str(tiny_data), "--runs", str(folder), "--out", str(out), "--seeds", "1",
                      "--precisions", "bf16"])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["seed"], r["precision"]) for r in rows] == [(0, "fp32"), (0, "bf16"), (1, "bf16")]
    invert_bf16.main(["--data-dir", str(tiny_data), "--runs", str(folder), "--out", str(out), "--precisions", "fp32"])
    untimed = lambda row: {k: v for k, v in row.items() if k != "s_per_step"}
    again = json.loads(out.read_text())["rows"]  # a row measured again replaces its old one; the others stay
    assert again[:2] == rows[1:] and untimed(again[2]) == untimed(rows[0])
    invert_bf16.main(["--data-dir", str(tiny_data), "--runs", str(folder), "--out", str(out), "--time-only", "2"])
    timed = json.loads(out.read_text())["rows"]
    assert timed[:3] == again  # timings only: they replace no calibrated row
    assert [(r["precision"], r["timed_only"], r["samples"], r["steps"], "acc_calibrated" in r)
            for r in timed[3:]] == [("fp32", True, 256, 2, False), ("bf16", True, 256, 2, False)]
    (folder / "student_calibrated.pt").unlink()  # a run without its calibrated student: nothing to evaluate
    invert_bf16.main(["--data-dir", str(tiny_data), "--runs", str(folder), "--out", str(out), "--precisions", "bf16"])
    assert json.loads(out.read_text())["rows"][-1]["acc_calibrated_by_the_run_fp32"] is None
    with pytest.raises(common.InputError, match="no checkpoint.pt"):
        invert_bf16.main(["--data-dir", str(tiny_data), "--runs", str(tmp_path), "--out", str(out)])
    with pytest.raises(SystemExit):
        invert_bf16.main(["--data-dir", str(tiny_data), "--runs", str(folder), "--out", str(out), "--time-only", "0"])


def test_batch_align_skips_the_stage_output_arm_of_a_teacher_without_resnet_stages(tmp_path, monkeypatch, capsys):
    """A ViT teacher's blocks have no stage outputs of the ResNet student's shapes (batch_align_ln_gn.py refuses
    --feature-weight for it): the bench skips that arm and goes on with the others instead of stopping there."""
    ran = []
    monkeypatch.setattr(batch_align, "run_or_resume", lambda script, argv, run_root, target: ran.append(target.name))
    monkeypatch.setattr("sys.argv", ["batch_align.py", "--teachers", "vit", "gn", "--arms", "align_feat10",
                                     "--out", str(tmp_path)])
    batch_align.main()
    assert ran == ["gn__align_feat10.json"]
    assert "vit align_feat10: skipped, its stages cannot be matched to the ResNet student's" in capsys.readouterr().out
