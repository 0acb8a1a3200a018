"""The unhappy paths: no silent damage, one clear line for every bad input, resume that cannot go wrong quietly."""
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tqdm import tqdm

import batch_align_ln_gn as ba
import bn_ablation
import common
import cs_rejection_bn as kd
import train_teacher
import vit_failure_analysis as vfa
from conftest import (REPO, assert_same_tensors, crash_after_second_save, final_state, save_teacher,
                      tiny_align_args, tiny_args, without_timing)


def argument_error(capsys, fn, *flags):
    """The message of the argparse error that fn(flags) exits with."""
    with pytest.raises(SystemExit) as e:
        fn(list(flags))
    assert e.value.code == 2
    return capsys.readouterr().err


# --- train_teacher.py never replaces a teacher by accident --------------------------------------------------------
def test_train_teacher_refuses_to_overwrite_an_existing_checkpoint(tiny_data, tmp_path, capsys):
    out = tmp_path / "teacher.pt"
    out.write_bytes(b"a teacher someone trained for hours")
    err = argument_error(capsys, train_teacher.parse_args, "--data-dir", str(tiny_data), "--out", str(out))
    assert "exists; pass --overwrite" in err and out.read_bytes() == b"a teacher someone trained for hours"
    # The default --out is the shipped teacher in the repository, whatever the working folder.
    err = argument_error(capsys, train_teacher.parse_args, "--data-dir", str(tiny_data))
    assert str(REPO / "teachers" / "resnet20_cifar10_bn.pt") in err
    args = train_teacher.parse_args(["--out", str(out), "--overwrite"])
    assert train_teacher.out_path(args) == out


def test_train_teacher_with_zero_epochs_is_refused(tiny_data, tmp_path, capsys):
    err = argument_error(capsys, train_teacher.parse_args, "--epochs", "0", "--out", str(tmp_path / "t.pt"))
    assert "--epochs >= 1" in err and not (tmp_path / "t.pt").exists()


def test_train_teacher_warm_up_is_shorter_than_the_run(tmp_path, capsys):
    out = ["--out", str(tmp_path / "t.pt")]
    warmup = lambda *flags: train_teacher.parse_args([*flags, *out]).warmup_epochs
    assert (warmup(), warmup("--epochs", "30"), warmup("--epochs", "2"), warmup("--epochs", "5")) == (2, 2, 0.2, 0.5)
    assert warmup("--epochs", "2", "--warmup-epochs", "1.5") == 1.5
    for flags in (("--epochs", "2", "--warmup-epochs", "2"), ("--epochs", "1", "--warmup-epochs", "3"),
                  ("--warmup-epochs", "-1")):  # the run would end inside the warm-up, with no decay
        assert "must be at least 0 and shorter than --epochs" in argument_error(capsys, train_teacher.parse_args,
                                                                               *flags, *out)


def test_train_teacher_never_replaces_an_unfinished_run_by_accident(tiny_data, tmp_path, capsys):
    out = tmp_path / "t.pt"
    out.with_suffix(".partial").write_bytes(b"epochs of someone's run")
    err = argument_error(capsys, train_teacher.parse_args, "--data-dir", str(tiny_data), "--out", str(out))
    assert "t.partial holds an unfinished run: --resume continues it, --overwrite starts over" in err
    for flag in ("--resume", "--overwrite"):
        assert train_teacher.parse_args(["--out", str(out), flag])


def test_overwrite_starts_over_so_a_stop_never_describes_the_earlier_run(tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "t.pt"
    common.save_checkpoint(out.with_suffix(".partial"), epoch=1, step=3)  # an earlier run's progress
    with pytest.raises(KeyboardInterrupt):
        signal_at_call(monkeypatch, train_teacher, "augment", 1, signal.SIGINT, times=2)  # stopped at once in step 1
        train_teacher.main(["--data-dir", str(tiny_data), "--epochs", "2", "--batch-size", "16", "--no-bf16",
                            "--out", str(out), "--overwrite"])
    said = capsys.readouterr()
    assert f"--overwrite: deleted {out.with_suffix('.partial')} of an earlier run" in said.out
    assert "stopped before anything was saved: start it again" in said.err and "holds" not in said.err
    assert not out.with_suffix(".partial").exists() and not out.exists()


def test_train_teacher_says_when_resume_has_nothing_to_resume(tiny_data, tmp_path, capsys):
    train_teacher.main(["--data-dir", str(tiny_data), "--epochs", "1", "--batch-size", "64", "--no-bf16",
                        "--out", str(tmp_path / "t.pt"), "--resume"])
    assert "--resume: no " in capsys.readouterr().out


def test_a_model_and_norm_that_cannot_be_built_are_one_line_errors_before_any_data_loads(tmp_path, capsys):
    out = ["--out", str(tmp_path / "t.pt"), "--data-dir", str(tmp_path / "no data here")]
    assert train_teacher.parse_args(["--model", "vit_tiny", *out]).norm == "ln"  # the ViT's own norm by default
    assert train_teacher.parse_args(out).norm == "bn"
    err = argument_error(capsys, train_teacher.parse_args, "--model", "vit_tiny", "--norm", "bn", *out)
    assert "vit_tiny uses LayerNorm only (norm ln); got norm bn" in err
    err = argument_error(capsys, train_teacher.parse_args, "--model", "resnet18", "--norm", "gn-bn-bn", *out)
    assert "one norm per stage is for the CIFAR ResNets" in err
    for script in (kd, ba):
        err = argument_error(capsys, script.parse_args, "--student", "vit_tiny", "--student-norm", "bn")
        assert "vit_tiny uses LayerNorm only" in err
    with pytest.raises(common.InputError, match="unknown model"):
        common.build_model("resnet21")


@pytest.mark.parametrize("content", [[1, 2], torch.zeros(3)], ids=["list", "tensor"])
def test_a_checkpoint_that_is_not_a_dict_is_one_clear_error(tmp_path, content):
    torch.save(content, tmp_path / "t.pt")
    with pytest.raises(common.InputError, match="not a checkpoint"):
        common.load_teacher("resnet20", tmp_path / "t.pt")


def test_a_replaced_shipped_teacher_is_reported_at_load(tiny_teacher, tmp_path, monkeypatch, capsys):
    (tmp_path / "teachers").mkdir()
    shutil.copy(tiny_teacher, tmp_path / "teachers" / "resnet20_cifar10_bn.pt")
    record = {"sha256": common.sha256_of(tiny_teacher), "test_acc": 0.5}
    (tmp_path / "teachers" / "manifest.json").write_text(json.dumps({"resnet20_cifar10_bn.pt": record}))
    monkeypatch.setattr(common, "REPO", tmp_path)
    common.load_teacher("resnet20", tmp_path / "teachers" / "resnet20_cifar10_bn.pt")
    assert "WARNING" not in capsys.readouterr().err  # the file the manifest names: silent
    (tmp_path / "teachers" / "manifest.json").write_text(json.dumps({"resnet20_cifar10_bn.pt": {**record,
                                                                                                  "sha256": "0" * 64}}))
    common.load_teacher("resnet20", tmp_path / "teachers" / "resnet20_cifar10_bn.pt")
    err = capsys.readouterr().err
    assert "is not the teacher we ship" in err and "git checkout teachers/resnet20_cifar10_bn.pt" in err


# --- resume ----------------------------------------------------------------------------------------------------------
def interrupted_run(tiny_data, teacher, out, monkeypatch, script=kd):
    """A run that 'died' right after its second checkpoint (step 4 of 6); returns its folder."""
    real_save = common.save_checkpoint
    crash_after_second_save(monkeypatch)
    argv = (tiny_align_args if script is ba else tiny_args)(tiny_data, teacher, out)
    with pytest.raises(SystemExit) as e:
        script.main(argv)
    assert e.value.code == 130
    monkeypatch.setattr(common, "save_checkpoint", real_save)
    return next(out.iterdir())


@pytest.mark.parametrize("script", [kd, ba], ids=["cs_rejection_bn", "batch_align_ln_gn"])
def test_interrupt_says_where_it_stopped_and_how_to_resume(script, tiny_data, tiny_teacher, gn_teacher, tmp_path,
                                                           monkeypatch, capsys):
    bars = []

    class Recorded(tqdm):  # every progress bar the run opens
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            bars.append(self)
    monkeypatch.setattr(script, "tqdm", Recorded)
    teacher = tiny_teacher if script is kd else gn_teacher
    run = interrupted_run(tiny_data, teacher, tmp_path, monkeypatch, script)
    err = capsys.readouterr().err
    assert f"stopped at step 4, last checkpoint at step 4: resume with --resume {run}" in err
    assert "Traceback" not in err
    # the progress bar is closed (tqdm disables a bar it closes), not left open to print again when the process exits
    training = [bar for bar in bars if bar.desc == "noise KD"]
    assert len(training) == 1 and training[0].disable and training[0].n == 4


def signal_at_call(monkeypatch, module, name, n, sig, times=1):
    """Make the n-th call of module.name send this process `sig` (`times` times) before it runs, as Ctrl-C or a job
    scheduler's SIGTERM would in the middle of a training step."""
    real, calls = getattr(module, name), []

    def signal_at_nth(*a, **kw):
        calls.append(1)
        if len(calls) == n:
            for _ in range(times):
                os.kill(os.getpid(), sig)
        return real(*a, **kw)
    monkeypatch.setattr(module, name, signal_at_nth)


@pytest.mark.parametrize("script,sig", [(kd, signal.SIGINT), (kd, signal.SIGTERM), (ba, signal.SIGTERM)],
                         ids=["cs_rejection_bn-sigint", "cs_rejection_bn-sigterm", "batch_align_ln_gn-sigterm"])
def test_a_signal_during_a_step_saves_that_step_and_the_run_resumes_exactly(script, sig, tiny_data, tiny_teacher,
                                                                            gn_teacher, tmp_path, monkeypatch, capsys):
    teacher = tiny_teacher if script is kd else gn_teacher
    argv = lambda out: (tiny_align_args if script is ba else tiny_args)(tiny_data, teacher, out, "--ckpt-every", "4")
    whole = script.main(argv(tmp_path / "whole"))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m, pytest.raises(SystemExit) as e:
        signal_at_call(m, script, "kd_loss", 3, sig)  # during step 3; the periodic checkpoint would be at step 4
        script.main(argv(tmp_path / "cut"))
    assert e.value.code == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back as they were
    run, err = next((tmp_path / "cut").iterdir()), capsys.readouterr().err
    assert f"{signal.Signals(sig).name}: stopping once this step is done and saved" in err
    assert f"stopped at step 3, last checkpoint at step 3: resume with --resume {run}" in err
    assert "Traceback" not in err
    resumed = script.main(["--resume", str(run)])
    assert without_timing(resumed) == without_timing(whole)
    assert_same_tensors(final_state(tmp_path / "cut"), final_state(tmp_path / "whole"))


def test_a_second_signal_stops_at_once(tiny_data, tiny_teacher, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        signal_at_call(monkeypatch, kd, "kd_loss", 3, signal.SIGINT, times=2)  # impatient: Ctrl-C twice in step 3
        kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--ckpt-every", "4"))
    assert e.value.code == 130
    assert "stopped at step 2, no checkpoint yet: start it again" in capsys.readouterr().err  # step 3 was cut


@pytest.mark.parametrize("call,saved", [(7, (1, 3)), (4, (1, 0))], ids=["within-an-epoch", "last-step-of-an-epoch"])
def test_a_signal_while_a_teacher_trains_saves_that_step_and_it_resumes_exactly(call, saved, tiny_data, tmp_path,
                                                                                 monkeypatch, capsys):
    args = ["--data-dir", str(tiny_data), "--epochs", "2", "--batch-size", "16", "--no-bf16", "--ckpt-every", "100"]
    train_teacher.main(args + ["--out", str(tmp_path / "whole.pt")])
    cut = tmp_path / "cut.pt"
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        signal_at_call(m, train_teacher, "augment", call, signal.SIGTERM)  # augment runs once per step, 4 an epoch
        train_teacher.main(args + ["--out", str(cut)])
    ck = common.load_checkpoint(cut.with_suffix(".partial"))
    assert (ck["epoch"], ck["step"]) == saved and not cut.exists()
    told = {(1, 3): "holds 1 epoch and 3 steps of epoch 2, --resume", (1, 0): "holds 1 epoch, --resume"}[saved]
    assert f"stopped: {cut.with_suffix('.partial')} {told} continues from there" in capsys.readouterr().err
    train_teacher.main(args + ["--out", str(cut), "--resume"])
    a, b = common.load_checkpoint(tmp_path / "whole.pt"), common.load_checkpoint(cut)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_interrupts_before_and_after_the_training_steps_say_what_to_do(tiny_data, tiny_teacher, tmp_path, monkeypatch,
                                                                     capsys):
    def interrupt(*a, **kw):
        raise KeyboardInterrupt
    for name in ("fit_noise", "invert_teacher_inputs"):  # the noise fit before step 1; the calibration after the last
        real = getattr(kd, name)
        monkeypatch.setattr(kd, name, interrupt)
        with pytest.raises(SystemExit) as e:
            kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / name))
        monkeypatch.setattr(kd, name, real)
        assert e.value.code == 130
        run, err = next((tmp_path / name).iterdir()), capsys.readouterr().err
        if name == "fit_noise":
            assert "stopped at step 0, no checkpoint yet: start it again" in err
        else:
            assert f"stopped at step 6, last checkpoint at step 6: resume with --resume {run}" in err
            assert not (run / "results.json").exists()
            res = kd.main(["--resume", str(run)])  # calibrates the saved student and writes the results
            assert "eval/acc_calibrated" in res and (run / "results.json").is_file()


def test_a_calibration_that_fails_keeps_the_trained_students_results(tiny_data, tiny_teacher, tmp_path, monkeypatch,
                                                                     capsys):
    def overflow(*a, **kw):
        raise common.InputError("the BN-statistics loss is not finite")
    monkeypatch.setattr(kd, "invert_teacher_inputs", overflow)
    res = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path))
    run = next(tmp_path.iterdir())
    assert "eval/acc_calibrated" not in res and "eval/acc_running" in res and (run / "results.json").is_file()
    assert not (run / "student_calibrated.pt").exists()
    assert "--calibrate-bn failed, so the results have no calibrated student" in capsys.readouterr().err


@pytest.mark.parametrize("sig,background", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["ctrl-c", "sigterm", "sigint-in-background"])
def test_sigint_or_sigterm_ends_a_real_run_with_status_130_and_a_resume_hint(tiny_data, tiny_teacher, tmp_path, sig,
                                                                           background):
    cmd = [sys.executable, str(REPO / "cs_rejection_bn.py"),  # no periodic checkpoint: the signal makes the one
           *tiny_args(tiny_data, tiny_teacher, tmp_path, "--no-bf16", "--steps", "100000", "--ckpt-every", "100000")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # background: started as `nohup python ... &` starts it, with SIGINT ignored
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=ignore)
    deadline = time.time() + 120
    logged = lambda: any(f.stat().st_size for f in tmp_path.glob("*/metrics.jsonl"))  # its first evaluation done
    while not logged() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    stopped = re.search(r"stopped at step (\d+), last checkpoint at step (\d+): resume with --resume", err)
    assert stopped and stopped[1] == stopped[2] and int(stopped[1]) >= 3, err  # the step it stopped at is saved
    assert "Traceback" not in err


def test_resume_refuses_a_switched_teacher(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    teacher = tmp_path / "teacher.pt"
    shutil.copy(tiny_teacher, teacher)
    run = interrupted_run(tiny_data, teacher, tmp_path / "runs", monkeypatch)
    torch.manual_seed(7)
    save_teacher(teacher, common.build_model("resnet20").eval())  # another teacher under the same name
    with pytest.raises(common.InputError, match="is not the teacher .* started with"):
        kd.main(["--resume", str(run)])


def test_resume_survives_a_torn_last_metrics_line(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    run = interrupted_run(tiny_data, tiny_teacher, tmp_path, monkeypatch)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # the disk filled up mid-line
    res = kd.main(["--resume", str(run)])
    assert res["samples_seen"] == 6 * 16
    assert all(isinstance(r, dict) for r in common.MetricsLog.read(run / "metrics.jsonl"))


@pytest.mark.parametrize("script", [kd, ba, bn_ablation])
def test_resume_of_something_that_is_not_a_run_is_one_line(script, tmp_path, capsys):
    assert "no such run folder" in argument_error(capsys, script.parse_args, "--resume", str(tmp_path / "nowhere"))
    assert "not a run folder" in argument_error(capsys, script.parse_args, "--resume", str(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    foreign = {"sizes": [8], "teacher_ckpts": []}  # vit_failure_analysis.py settings
    (other / "args.json").write_text(json.dumps(foreign))
    assert "a run of another script" in argument_error(capsys, script.parse_args, "--resume", str(other))


def test_a_run_of_another_method_script_is_refused(tiny_data, tiny_teacher, tmp_path, monkeypatch, capsys):
    run = interrupted_run(tiny_data, tiny_teacher, tmp_path, monkeypatch)
    assert "a run of another script" in argument_error(capsys, ba.parse_args, "--resume", str(run))


def test_flags_beside_resume_are_refused_not_ignored(tmp_path, capsys):
    err = argument_error(capsys, kd.parse_args, "--resume", str(tmp_path), "--steps", "9", "--lr", "0.1")
    assert "drop --steps --lr" in err
    default = kd.parse_args([])  # a flag at its default value would be ignored just the same
    err = argument_error(capsys, kd.parse_args, "--resume", str(tmp_path), "--steps", str(default.steps),
                         "--device", default.device, "--no-calibrate-bn")
    assert "drop --calibrate-bn/--no-calibrate-bn --steps --device" in err


def test_a_run_resumes_only_on_a_device_this_machine_has(tmp_path, capsys):
    saved = {**vars(kd.parse_args([])), "device": "cuda:7"}
    (tmp_path / "args.json").write_text(json.dumps(saved))
    err = argument_error(capsys, kd.parse_args, "--resume", str(tmp_path))
    assert f"--resume {tmp_path}: the run was on cuda:7, which this machine does not have" in err
    saved["device"] = "cpu"
    (tmp_path / "args.json").write_text(json.dumps(saved))
    assert kd.parse_args(["--resume", str(tmp_path)]).device == "cpu"


def test_a_run_started_before_the_fitted_noise_resumes_on_white_noise(tmp_path):
    saved = vars(kd.parse_args([]))
    assert saved.pop("fit_noise") is True  # today's default; runs from before the flag drew white noise
    (tmp_path / "args.json").write_text(json.dumps(saved))
    assert kd.parse_args(["--resume", str(tmp_path)]).fit_noise is False


def test_a_run_started_before_a_flag_was_renamed_resumes_with_its_setting(tmp_path):
    saved = vars(bn_ablation.parse_args([]))
    saved["diag_samples"] = saved.pop("probe_samples") + 7  # bn_ablation's --probe-samples was --diag-samples
    (tmp_path / "args.json").write_text(json.dumps(saved))
    assert bn_ablation.parse_args(["--resume", str(tmp_path)]).probe_samples == saved["diag_samples"]


# --- bad checkpoints, data and flags ---------------------------------------------------------------------------------
@pytest.mark.parametrize("content,message", [(b"", "is empty"), (b"not a checkpoint\n", "not a readable PyTorch"),
                                             (None, "is a folder, not a checkpoint")])
def test_bad_checkpoint_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "t.pt"
    path.mkdir() if content is None else path.write_bytes(content)
    with pytest.raises(common.InputError, match=message):
        common.load_teacher("resnet20", path)


def test_bad_npz_files_are_one_clear_error_that_never_suggests_pickle(tmp_path):
    (tmp_path / "cifar10_test.npz").write_text("hello")
    with pytest.raises(common.InputError, match="not a readable .npz") as e:
        common.load_split("cifar10", "test", tmp_path)
    np.savez(tmp_path / "cifar10_test.npz", images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(common.InputError, match=r"arrays x .* and y .*got \['images'\]"):
        common.load_split("cifar10", "test", tmp_path)
    assert "pickle" not in str(e.value)


def test_images_of_the_wrong_size_or_labels_out_of_range_are_refused(tmp_path):
    np.savez(tmp_path / "cifar10_test.npz", x=np.zeros((4, 16, 16, 3), np.uint8), y=np.arange(4))
    with pytest.raises(common.InputError, match="cifar10 images are 32x32, these are 16x16"):
        common.load_split("cifar10", "test", tmp_path)
    np.savez(tmp_path / "cifar10_test.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.array([0, 1, 10, -1]))
    with pytest.raises(common.InputError, match=r"labels must lie in \[0, 10\).*-1..10"):
        common.load_split("cifar10", "test", tmp_path)


@pytest.mark.parametrize("script", [kd, ba])
@pytest.mark.parametrize("flags", [["--lr", "-1"], ["--eval-batch-size", "0"], ["--eval-subset", "-1"],
                                   ["--marginal-momentum", "1"], ["--marginal-momentum", "-0.1"],
                                   ["--device", "tpu"], ["--noise-alpha", "30"]])
def test_bad_values_are_argument_errors(script, flags, capsys):
    assert "error:" in argument_error(capsys, script.parse_args, *flags)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("script", [kd, ba, bn_ablation, vfa, train_teacher])
def test_cuda_without_a_gpu_is_one_line(script, capsys):
    assert "has no CUDA GPU" in argument_error(capsys, script.parse_args, "--device", "cuda")


def test_bad_input_from_the_command_line_is_one_line_without_traceback(tiny_data, tmp_path):
    bad = tmp_path / "t.pt"
    bad.write_text("not a checkpoint")
    out = subprocess.run([sys.executable, str(REPO / "cs_rejection_bn.py"), "--teacher-ckpt", str(bad),
                          "--data-dir", str(tiny_data), "--out-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {bad} is not a readable PyTorch checkpoint")


def test_missing_vit_teacher_hint_names_a_command_that_works(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "REPO", tmp_path)  # a clone without teachers
    with pytest.raises(common.InputError) as e:
        common.teacher_ckpt_or_exit("vit_tiny", "cifar10", norm="gn")  # batch_align's default --teacher-norm
    assert "vit_tiny_cifar10_ln.pt" in str(e.value) and "--norm ln" in str(e.value)
    cmd = str(e.value).splitlines()[1].split()
    args = train_teacher.parse_args(cmd[2:])  # the suggested command parses (it would train the right model)
    assert (args.norm, args.optimizer, args.lr) == ("ln", "adamw", 1e-3)  # the ViT recipe, not SGD's lr 0.2
    with pytest.raises(common.InputError, match="imagenet_vit_b_16_imagenet100_ln.pt"):  # a ViT too
        common.teacher_ckpt_or_exit("imagenet_vit_b_16", "imagenet100", norm="bn")


def test_default_teachers_are_found_from_any_working_folder(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: "teachers/..." does not exist here
    res = vfa.main(["--data-dir", str(tiny_data), "--sizes", "32", "--probe-samples", "16", "--batch-size", "8",
                    "--out-dir", str(tmp_path / "runs")])
    assert {r["model"] for r in res["rows"]} == {"vit_tiny/ln", "resnet20/gn", "resnet20/bn"}  # the shipped three
    assert kd.parse_args([]).teacher_ckpt is None and common.teacher_ckpt_or_exit("resnet20", "cifar10") == \
        str(REPO / "teachers" / "resnet20_cifar10_bn.pt")


# --- run folders -----------------------------------------------------------------------------------------------------
def _make_dirs(out, n):
    time.strftime = lambda *a: "20260101-000000"  # every process in the same second
    return [common.make_run_dir(out, "cifar10", "s", "t", 0).name for _ in range(n)]


def test_run_folders_are_unique_when_many_processes_start_in_the_same_second(tmp_path):
    with multiprocessing.get_context("fork").Pool(6) as pool:
        names = sum(pool.starmap(_make_dirs, [(tmp_path, 10)] * 6), [])
    assert len(names) == len(set(names)) == 60 and len(list(tmp_path.iterdir())) == 60
