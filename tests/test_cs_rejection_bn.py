"""cs_rejection_bn.py: CS inference, the rejection sampler, and whole runs on generated data."""
import importlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import cs_rejection_bn as kd
import train_teacher
from conftest import (assert_same_tensors, crash_after_second_save, final_state, host_reads_per_step, save_teacher,
                      spy_on_loaded_teacher, tiny_args, without_timing)


# --- CS inference --------------------------------------------------------------------------------------------------
def test_cs_forward_equals_a_hand_computation_with_batch_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1), bn.running_mean.fill_(3.0), bn.running_var.fill_(9.0)
    bn.eval()
    x = torch.randn(8, 4, 5, 5) * 2 + 1
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)  # BN normalizes with the biased variance
    hand = (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    with kd.current_statistics(bn):
        assert torch.allclose(bn(x), hand, atol=1e-5)
    running = (x - 3.0) / torch.sqrt(torch.tensor(9.0) + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    assert torch.allclose(bn(x), running, atol=1e-5)  # outside the context: eval mode again


def test_cs_depends_on_the_batch_and_leaves_every_buffer_bit_identical(tiny_teacher):
    teacher, _ = common.load_teacher("resnet20", tiny_teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    z = torch.randn(16, 3, 32, 32)
    eval_out = teacher(z)
    full = kd.teacher_forward(teacher, z, "cs")
    half = kd.teacher_forward(teacher, z[:8], "cs")
    assert not torch.allclose(full[:8], half, atol=1e-4)  # sample i's logits depend on the rest of the batch
    assert not torch.allclose(full, eval_out, atol=1e-3)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert torch.equal(teacher(z), eval_out) and not teacher.training  # the patch is gone after the context


def test_cs_last_k_patches_only_the_last_k_batchnorm_layers_and_restores_them(tiny_teacher):
    teacher, _ = common.load_teacher("resnet20", tiny_teacher)
    bns = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    seen = []  # per BN layer, in call order: did it normalize with the batch's statistics?
    hooks = [m.register_forward_hook(lambda m, i, o, seen=seen: seen.append((m, "forward" in m.__dict__)))
             for m in bns]
    z = torch.randn(16, 3, 32, 32)
    with kd.current_statistics(teacher, last=3):
        assert ["forward" in m.__dict__ for m in bns] == [False] * (len(bns) - 3) + [True] * 3
        out = teacher(z)
    for h in hooks:
        h.remove()
    # the patched ones are the last three to run, not just the last three registered
    assert [cs for _, cs in seen] == [False] * (len(bns) - 3) + [True] * 3
    assert not any("forward" in m.__dict__ for m in bns)  # restored
    full, eval_out = kd.teacher_forward(teacher, z, "cs"), teacher(z)
    assert not torch.allclose(out, full, atol=1e-4) and not torch.allclose(out, eval_out, atol=1e-4)
    assert torch.equal(kd.teacher_forward(teacher, z, "cs", cs_last=3), out)
    assert torch.equal(kd.teacher_forward(teacher, z, "cs", cs_last=len(bns)), full)  # all of them = the default


def test_cs_last_layers_run_uses_it_and_refuses_more_layers_than_the_teacher_has(tiny_data, tiny_teacher, tmp_path,
                                                                               monkeypatch):
    calls = []
    real = kd.teacher_forward
    monkeypatch.setattr(kd, "teacher_forward", lambda *a: calls.append(a[3]) or real(*a))
    res = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--cs-last-layers", "7"))
    assert calls and set(calls) == {7} and res["args"]["cs_last_layers"] == 7
    with pytest.raises(SystemExit, match="has only 19 BatchNorm layers"):
        kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--cs-last-layers", "20"))


# --- the rejection sampler -----------------------------------------------------------------------------------------
def test_rejection_turns_a_skewed_label_stream_into_a_near_uniform_accepted_histogram():
    k, gen = 10, torch.Generator().manual_seed(0)
    p = torch.tensor([0.30, 0.20, 0.12, 0.08, 0.08, 0.06, 0.05, 0.05, 0.04, 0.02])
    sampler = kd.RejectionSampler(k, momentum=0.9, floor=0.1, generator=torch.Generator().manual_seed(1))
    raw, acc = torch.zeros(k), torch.zeros(k)
    for _ in range(200):
        labels = torch.multinomial(p, 512, replacement=True, generator=gen)
        sampler.update(labels)
        keep = sampler.accept(labels)
        raw += torch.bincount(labels, minlength=k)
        acc += torch.bincount(labels[keep], minlength=k)
    assert common.label_stats(raw)["entropy"] < 0.92
    assert common.label_stats(acc)["entropy"] > 0.995 and acc.max() / acc.sum() < 0.115
    # the acceptance rate is sum_y min(p(y), c) with c = the smallest p(y) = 0.02: 10 classes * 0.02
    assert acc.sum() / raw.sum() == pytest.approx(0.2, abs=0.02)


def test_negligible_classes_do_not_set_the_acceptance_level():
    sampler = kd.RejectionSampler(4, momentum=0.0, floor=0.1, generator=torch.Generator())
    sampler.update(torch.tensor([0] * 600 + [1] * 300 + [2] * 99 + [3] * 1))  # class 3 at 0.1% < 0.1 / 4
    assert sampler.level().item() == pytest.approx(0.099)
    assert torch.allclose(sampler.accept_prob(torch.tensor([0, 1, 2, 3])).float(),
                          torch.tensor([0.099 / 0.6, 0.099 / 0.3, 1.0, 1.0]))


class ConstantTeacher(nn.Module):
    """Predicts class 0 for 97% of samples and class 1 for the rest; classes 2..9 never. No BatchNorm."""

    def forward(self, z):
        logits = torch.zeros(len(z), 10)
        logits[:, 0] = 5.0
        logits[(z.flatten(1)[:, 0] > 1.9), 1] = 10.0  # P(N(0,1) > 1.9) ~ 3%
        return logits


def test_rejection_terminates_and_reports_when_classes_are_never_predicted():
    args = kd.parse_args(["--batch-size", "64", "--pool-factor", "1", "--max-pools", "3", "--device", "cpu"])
    sampler = kd.RejectionSampler(10, 0.9, 0.1, torch.Generator().manual_seed(0))
    stats = kd.new_stats(10)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        z, t, w = kd.draw_batch(args, ConstantTeacher(), sampler, gen, (3, 4, 4), stats)
        assert len(z) == len(t) == 64 and w is None
        stats["student_samples"] += 64
    assert stats["teacher_samples"] == 5 * 3 * 64  # every step used all its pools, and no more
    assert stats["shortfall"] > 0
    summary = kd.noise_summary(stats)
    assert summary["noise/label_missing"] == 8
    assert summary["noise/accepted_max_share"] < summary["noise/label_max_share"]  # class 1 got promoted


def test_reweighting_weights_rare_classes_up_with_mean_one():
    args = kd.parse_args(["--batch-size", "256", "--balance", "reweight", "--device", "cpu"])
    sampler = kd.RejectionSampler(10, 0.0, 0.1, torch.Generator())
    stats = kd.new_stats(10)
    z, t, w = kd.draw_batch(args, ConstantTeacher(), sampler, torch.Generator().manual_seed(0), (3, 4, 4), stats)
    labels = t.argmax(1)
    assert w.mean().item() == pytest.approx(1.0) and w[labels == 1].min() > 10 * w[labels == 0].max()


def test_kd_loss_is_zero_for_equal_logits_and_scales_with_tau_squared():
    t = torch.randn(8, 10)
    assert kd.kd_loss(t, t, 1.0).item() == pytest.approx(0, abs=1e-6)
    s = torch.randn(8, 10)
    kl = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean")
    assert kd.kd_loss(s, t, 4.0).item() == pytest.approx(16 * kl.item(), rel=1e-5)


def test_logit_mse_loss_ignores_a_shift_of_all_logits_and_weights_samples():
    t = torch.randn(8, 10)
    assert kd.logit_mse_loss(t + torch.randn(8, 1), t).item() == pytest.approx(0, abs=1e-6)  # softmax's invariance
    s = torch.randn(8, 10)
    d = (s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))
    assert kd.logit_mse_loss(s, t).item() == pytest.approx(d.pow(2).mean().item(), rel=1e-5)
    w = torch.zeros(8)
    w[3] = 8.0  # all the weight on one sample
    assert kd.logit_mse_loss(s, t, w).item() == pytest.approx(d[3].pow(2).mean().item(), rel=1e-5)


def test_loss_mse_trains_on_the_logit_mse_and_never_calls_the_kl(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    calls = []
    real = kd.logit_mse_loss
    monkeypatch.setattr(kd, "logit_mse_loss", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(kd, "kd_loss", lambda *a: pytest.fail("--loss mse computed the KL"))
    res = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--loss", "mse", "--balance", "reweight"))
    assert len(calls) == 6 and res["args"]["loss"] == "mse" and math.isfinite(res["train/final_loss"])


# --- matching the teacher's stage outputs (--feature-weight) -------------------------------------------------------
def test_feature_loss_is_zero_for_equal_outputs_ignores_their_scale_and_weights_samples():
    torch.manual_seed(0)
    t = [torch.randn(8, 4, 6, 6), torch.randn(8, 8, 3, 3) * 50]
    s = [x + torch.randn_like(x) * x.std() for x in t]  # the same relative error in both stages
    assert kd.feature_loss(t, t).item() == 0
    loss = kd.feature_loss(s, t)
    assert loss.item() == pytest.approx(1.0, rel=0.2)  # error variance / teacher mean square, stage scale divided out
    assert kd.feature_loss([x * 10 for x in s], [x * 10 for x in t]).item() == pytest.approx(loss.item(), rel=1e-5)
    w = torch.zeros(8)
    w[2] = 8.0  # all the weight on one sample
    expected = sum((a[2] - b[2]).pow(2).mean() / b.pow(2).mean() for a, b in zip(s, t)) / 2
    assert kd.feature_loss(s, t, w).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError):
        kd.feature_loss(s[:1], t)  # a stage without its partner is an error, not a silent shorter sum


def test_stage_outputs_are_the_stages_in_forward_order_and_the_hooks_go_away(tiny_teacher):
    teacher, _ = common.load_teacher("resnet20", tiny_teacher)
    z = torch.randn(4, 3, 32, 32)
    with kd.stage_outputs(teacher) as outs:
        logits = teacher(z)
    assert [tuple(o.shape) for o in outs] == [(4, 16, 32, 32), (4, 32, 16, 16), (4, 64, 8, 8)]
    assert torch.equal(teacher.linear(F.adaptive_avg_pool2d(outs[-1], 1).flatten(1)), logits)  # the last stage feeds it
    assert all(not m._forward_hooks for m in kd.stages(teacher))
    feats = kd.teacher_features(teacher, z, "cs")
    with kd.current_statistics(teacher), kd.stage_outputs(teacher) as cs_outs:
        teacher(z)
    assert all(torch.equal(a, b) for a, b in zip(feats, cs_outs, strict=True))  # CS, like the teacher's targets
    assert not torch.equal(feats[0], outs[0])


def test_feature_weight_trains_the_student_on_the_teachers_stage_outputs_of_its_own_batch(tiny_data, tiny_teacher,
                                                                                            tmp_path, monkeypatch):
    seen = []
    real_features, real_loss = kd.teacher_features, kd.feature_loss
    monkeypatch.setattr(kd, "teacher_features", lambda t, z, *a: seen.append(z.clone()) or real_features(t, z, *a))
    monkeypatch.setattr(kd, "feature_loss", lambda s, t, w: seen.append(len(s)) or real_loss(s, t, w))
    monkeypatch.setattr(kd, "kd_loss", lambda s, t, tau, w: (s * 0).sum())  # the logits teach nothing here
    real_draw = kd.draw_batch
    batches = []
    monkeypatch.setattr(kd, "draw_batch", lambda *a: batches.append(real_draw(*a)) or batches[-1])
    res = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--feature-weight", "0.5"))
    assert [x for x in seen if isinstance(x, int)] == [3] * 6  # every step, all three stages
    zs = [x for x in seen if torch.is_tensor(x)]
    assert len(zs) == 6 and all(torch.equal(z, b[0]) for z, b in zip(zs, batches))  # the student's own batch
    assert res["args"]["feature_weight"] == 0.5 and res["train/final_loss"] > 0
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    torch.manual_seed(0)
    init = common.build_model("resnet20", 10).state_dict()
    trained = common.load_checkpoint(run / "checkpoint.pt")["student"]
    assert not torch.equal(init["conv1.weight"], trained["conv1.weight"])  # the feature loss alone moved it ...
    assert torch.equal(init["linear.weight"], trained["linear.weight"])  # ... and not what lies after the stages


def test_the_log_has_the_logit_and_feature_terms_of_the_loss(tiny_data, tiny_teacher, tmp_path):
    res = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "feat", "--feature-weight", "3"))
    rows = [r for r in common.MetricsLog.read(next((tmp_path / "feat").iterdir()) / "metrics.jsonl")
            if "train/loss" in r]
    assert rows and all(r["train/logit_loss"] > 0 and r["train/feature_loss"] > 0 for r in rows)
    assert all(r["train/loss"] == pytest.approx(r["train/logit_loss"] + 3 * r["train/feature_loss"], rel=1e-5)
               for r in rows)
    assert res["train/final_loss"] == rows[-1]["train/loss"]
    kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "logits", "--feature-weight", "0"))
    rows = [r for r in common.MetricsLog.read(next((tmp_path / "logits").iterdir()) / "metrics.jsonl")
            if "train/loss" in r]
    assert rows and not any("train/logit_loss" in r or "train/feature_loss" in r for r in rows)  # the loss is one


def test_feature_weight_is_30_by_default_where_the_stages_match_and_refused_where_they_do_not(tiny_data, tiny_teacher,
                                                                                               tmp_path, capsys):
    assert kd.parse_args([]).feature_weight is None  # decided once the models are built
    res = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "same", "--steps", "2"))
    assert res["args"]["feature_weight"] == 30.0 and "stage outputs matched: weight 30" in capsys.readouterr().out
    run = next((tmp_path / "same").iterdir())
    assert json.loads((run / "args.json").read_text())["feature_weight"] == 30.0  # a resumed run keeps it
    res = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "other", "--steps", "2", "--student", "resnet18",
                            "--eval-subset", "8"))
    assert res["args"]["feature_weight"] == 0.0
    assert "stage outputs matched: no (their shapes differ)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"needs stages of the same shapes: teacher resnet20 has \[\(16, 32, 32\)"):
        kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--feature-weight", "1", "--student", "resnet18"))


def test_a_run_started_before_feature_matching_and_calibration_resumes_without_them(tiny_data, tiny_teacher, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(kd, "teacher_features", lambda *a: pytest.fail("an old run resumed with stage outputs"))
    monkeypatch.setattr(kd, "invert_teacher_inputs", lambda *a: pytest.fail("an old run resumed with calibration"))
    kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--feature-weight", "0", "--no-calibrate-bn", "--steps", "2"))
    run = next(tmp_path.iterdir())
    saved = json.loads((run / "args.json").read_text())
    del saved["feature_weight"], saved["calibrate_bn"]  # what an args.json of an older run holds
    saved["steps"] = 4
    (run / "args.json").write_text(json.dumps(saved))
    (run / "results.json").unlink()
    resumed = kd.parse_args(["--resume", str(run)])
    assert resumed.feature_weight == 0.0 and resumed.calibrate_bn is False
    assert kd.main(["--resume", str(run)])["samples_seen"] == 4 * 16


# --- whole runs on generated data ----------------------------------------------------------------------------------
def test_run_trains_the_student_and_leaves_the_teacher_bit_identical(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    real_load = common.load_teacher
    loaded = spy_on_loaded_teacher(monkeypatch)
    res = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path))
    fresh, _ = real_load("resnet20", tiny_teacher)
    after = loaded["model"].float().to(memory_format=torch.contiguous_format).state_dict()
    assert all(torch.equal(v, after[k]) for k, v in fresh.state_dict().items())

    run = next(tmp_path.glob("cifar10__cs_rejection_bn__resnet20__s0__*"))
    student = common.load_checkpoint(run / "checkpoint.pt")["student"]
    torch.manual_seed(0)
    init = dict(common.build_model("resnet20").named_parameters())
    assert all(not torch.equal(init[k], student[k]) for k in init)  # every parameter tensor moved
    # Control: with lr 0 the same comparison finds the initialization again, so the check above can fail.
    kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "frozen", "--lr", "0"))
    frozen = final_state(tmp_path / "frozen")
    assert all(torch.equal(init[k], frozen[k]) for k in init)
    for key in ("teacher/acc", "eval/acc_running", "eval/acc_batchstats", "noise/label_entropy",
                "noise/accepted_label_entropy", "samples_seen", "samples_per_s", "provenance"):
        assert key in res
    assert res["samples_seen"] == 6 * 16 and res["teacher_samples"] >= 6 * 32
    assert [row["step"] for row in res["curve"]] == [3, 6]
    assert json.loads((run / "results.json").read_text())["eval/acc_running"] == res["eval/acc_running"]
    # results.json is what gets committed: no path of this machine in it; args.json (read by --resume) keeps them
    assert str(tmp_path) not in (run / "results.json").read_text()
    assert json.loads((run / "results.json").read_text())["teacher/ckpt"] == Path(tiny_teacher).name
    assert json.loads((run / "args.json").read_text())["teacher_ckpt"] == str(tiny_teacher)
    rows = common.MetricsLog.read(run / "metrics.jsonl")
    assert any("train/loss" in r for r in rows) and any("eval/acc_batchstats" in r for r in rows)


@pytest.mark.parametrize("extra", [[], ["--balance", "none", "--teacher-bn", "running", "--no-bf16"]])
def test_same_seed_gives_identical_metrics(tiny_data, tiny_teacher, tmp_path, extra):
    a = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "a", *extra))
    b = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "b", *extra))
    assert without_timing(a) == without_timing(b)
    assert_same_tensors(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    c = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "c", "--seed", "1", *extra))
    assert without_timing(c)["curve"] != without_timing(a)["curve"]


@pytest.mark.parametrize("extra", [[], ["--fit-noise", "--fit-noise-steps", "3"]])
def test_resume_after_an_interruption_gives_the_same_final_metrics(tiny_data, tiny_teacher, tmp_path, monkeypatch,
                                                                  extra):
    tiny = lambda out: tiny_args(tiny_data, tiny_teacher, out, *extra)
    whole = kd.main(tiny(tmp_path / "whole"))
    real_save = common.save_checkpoint
    crash_after_second_save(monkeypatch)  # checkpoint at step 4 written, then the process "dies"
    with pytest.raises(SystemExit, match="130"):
        kd.main(tiny(tmp_path / "cut"))
    monkeypatch.setattr(common, "save_checkpoint", real_save)
    if extra:  # the resumed run must reuse the fitted noise, not fit again
        monkeypatch.setattr(kd, "fit_noise", lambda *a, **kw: pytest.fail("refitted the noise on resume"))
    run = next((tmp_path / "cut").iterdir())
    cut = common.load_checkpoint(run / "checkpoint.pt")
    assert cut["step"] == 4 and cut["setup_s"] > 0
    resumed = kd.main(["--resume", str(run)])
    assert without_timing(resumed) == without_timing(whole)
    # The wall time counts both processes; provenance names the step where the second one took over.
    prov, prov_whole = resumed["provenance"], whole["provenance"]
    assert prov["resumed_at_steps"] == [4] and prov["wall_time_s"] > prov["process_wall_time_s"] > 0
    assert prov_whole["resumed_at_steps"] == [] and prov_whole["wall_time_s"] == prov_whole["process_wall_time_s"]
    assert prov["setup_s"] == cut["setup_s"] and prov_whole["setup_s"] > 0  # the first process's setup, timed apart
    assert_same_tensors(final_state(tmp_path / "cut"), final_state(tmp_path / "whole"))
    assert [r["step"] for r in common.MetricsLog.read(run / "metrics.jsonl") if "eval/acc_running" in r] == [3, 6]


def test_a_bf16_run_resumed_where_bf16_is_emulated_continues_in_fp32_and_says_so(tiny_data, tiny_teacher, tmp_path,
                                                                                  monkeypatch, capsys):
    """bench/long_run.py's packs carry a run to other machines; on a CPU without native bf16, autocast emulates it
    at a fraction of fp32's speed, and a long run would crawl."""
    with monkeypatch.context() as m:
        crash_after_second_save(m)  # checkpoint at step 4 written, then the process "dies"
        with pytest.raises(SystemExit, match="130"):
            kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--bf16", "--no-fit-noise", "--no-calibrate-bn"))
    run = next(tmp_path.iterdir())
    monkeypatch.setattr(common, "bf16_supported", lambda device: False)  # the next machine
    capsys.readouterr()
    resumed = kd.main(["--resume", str(run)])
    assert "it continues in fp32" in capsys.readouterr().out
    assert resumed["args"]["bf16"] is False and resumed["provenance"]["resumed_at_steps"] == [4]
    here = common.device_name("cpu")
    assert resumed["provenance"]["stretches"] == [{"from_step": 0, "device": here, "bf16": True},
                                                  {"from_step": 4, "device": here, "bf16": False}]


def test_fit_noise_recovers_the_gaussian_a_teacher_was_calibrated_on():
    """A BN network whose running statistics come from white noise of mean 0.5 and std 2 per pixel: the fit must find
    that Gaussian (flat spectrum, variance 4, uncorrelated channels, mean 0.5) from a 1/f^2 start, and lower the loss."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=None))
    with torch.no_grad():
        for _ in range(20):  # momentum None: the running statistics are the average over these batches
            net(torch.randn(64, 3, 12, 12) * 2 + 0.5)
    for q in net.parameters():
        q.requires_grad_(False)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params, loss = kd.fit_noise(net, (3, 12, 12), 300, torch.Generator().manual_seed(0), batch_size=64, lr=0.05)
    # Bounds from seeds 0-2 of this setup: loss 800-3,000x lower, alpha 0, variances 3.67-4.15, covariances <= 0.55,
    # means 0.48-0.52; each bound leaves about twice that spread.
    assert loss["noise/bn_loss_fitted"] < loss["noise/bn_loss_white"] / 100
    cov = params["color"] @ params["color"].T
    assert params["alpha"] < 0.1
    assert torch.allclose(cov.diag(), torch.full((3,), 4.0), rtol=0.15)
    assert (cov - torch.diag(cov.diag())).abs().max() < 0.8
    assert torch.allclose(params["mean"], torch.full((3,), 0.5), atol=0.05)
    assert not net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_pre_hooks for m in net.modules())  # the fit's hooks are gone


def test_the_bn_statistics_loss_survives_a_dead_channel_and_refuses_an_overflowing_teacher():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)).eval().requires_grad_(False)
    with torch.no_grad():  # channel 0 pruned: constant (0) on every input, in training as on noise
        net[0].weight[0] = 0
        net[1].running_var[0] = 0
    params, loss = kd.fit_noise(net, (3, 8, 8), 3, torch.Generator().manual_seed(0), batch_size=16)
    assert math.isfinite(loss["noise/bn_loss_white"]) and math.isfinite(loss["noise/bn_loss_fitted"])
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in params.values())
    with torch.no_grad():
        net[0].weight.mul_(1e30)  # activations overflow float32 in the BN layers' statistics
    with pytest.raises(common.InputError, match="not finite.*--no-fit-noise and --no-calibrate-bn"):
        kd.fit_noise(net, (3, 8, 8), 3, torch.Generator().manual_seed(0), batch_size=16)


def test_fit_noise_run_records_the_fitted_gaussian_and_trains_on_it(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    seen = []
    real_sample = common.sample_noise
    monkeypatch.setattr(common, "sample_noise", lambda *a, **kw: seen.append(kw) or real_sample(*a, **kw))
    res = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--fit-noise", "--fit-noise-steps", "5"))
    fitted = res["noise/fitted"]
    assert set(fitted) == {"alpha", "color", "mean"} and res["noise/bn_loss_fitted"] < res["noise/bn_loss_white"]
    assert seen and all(kw["alpha"] == fitted["alpha"] and kw["color"].tolist() == fitted["color"] for kw in seen)


def test_inverted_inputs_fit_the_teachers_bn_statistics_and_leave_the_teacher_as_it_was(tiny_teacher):
    teacher, _ = common.load_teacher("resnet20", tiny_teacher)
    teacher.requires_grad_(False).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    start = kd.invert_teacher_inputs(teacher, (3, 12, 12), 20, 0, torch.Generator().manual_seed(0), batch_size=8)
    made = kd.invert_teacher_inputs(teacher, (3, 12, 12), 20, 30, torch.Generator().manual_seed(0), batch_size=8)
    assert [len(b) for b in made] == [8, 8, 4]  # n inputs in batches
    with torch.no_grad(), kd.bn_statistics_loss(teacher) as loss:
        assert all(loss(m) < 0.5 * loss(s) for m, s in zip(made, start))  # 0 steps: the noise they start from
    assert teacher.training and not any(m._forward_pre_hooks for m in teacher.modules())
    assert_same_tensors(before, teacher.state_dict())


def test_bf16_inversion_runs_the_teacher_in_bf16_and_still_fits_float32_inputs(tiny_teacher):
    teacher, _ = common.load_teacher("resnet20", tiny_teacher)
    teacher.requires_grad_(False)
    seen = []
    hook = teacher.conv1.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    start = kd.invert_teacher_inputs(teacher, (3, 12, 12), 16, 0, torch.Generator().manual_seed(0), batch_size=8)
    made = kd.invert_teacher_inputs(teacher, (3, 12, 12), 16, 30, torch.Generator().manual_seed(0), batch_size=8,
                                    bf16=True)
    hook.remove()
    assert set(seen) == {torch.bfloat16} and len(seen) == 60  # every step's forward, under autocast
    assert all(m.dtype == torch.float32 and m.shape == (8, 3, 12, 12) for m in made)
    with torch.no_grad(), kd.bn_statistics_loss(teacher) as loss:  # judged in float32
        assert all(loss(m) < 0.5 * loss(s) for m, s in zip(made, start))


def test_a_run_inverts_in_the_precision_it_trained_in(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    asked = []
    real = kd.invert_teacher_inputs
    monkeypatch.setattr(kd, "invert_teacher_inputs", lambda *a, **kw: asked.append(kw["bf16"]) or real(*a, **kw))
    for flag in ("--bf16", "--no-bf16"):
        kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--calibrate-bn", flag))
    assert asked == [True, False]


def test_calibrate_bn_averages_the_statistics_of_its_batches_in_a_copy():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():  # statistics from training, which the calibration must replace, not blend with
        student[1].running_mean.fill_(5.0), student[1].running_var.fill_(7.0), student[1].num_batches_tracked.fill_(100)
    batches = [torch.randn(6, 3, 5, 5) * 2 + 1, torch.randn(6, 3, 5, 5) - 3]
    calibrated = kd.calibrate_bn(student, batches)
    with torch.no_grad():
        h = [student[0](b) for b in batches]
    assert torch.allclose(calibrated[1].running_mean, torch.cat(h).mean(dim=(0, 2, 3)), atol=1e-5)  # equal batches
    # the variance: the average of the batches' unbiased variances, as BatchNorm's cumulative average keeps it
    var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in h]).mean(0)
    assert torch.allclose(calibrated[1].running_var, var, atol=1e-4)
    assert not calibrated.training and torch.equal(calibrated[0].weight, student[0].weight)
    assert torch.equal(student[1].running_mean, torch.full((4,), 5.0))  # the student itself is not touched


def test_calibrate_bn_is_on_by_default_for_a_bn_student_and_saves_the_calibrated_one_beside(tiny_data, tiny_teacher,
                                                                                            tmp_path, capsys):
    # fp32: the test evaluates the saved student in fp32, as the run then does
    plain = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "a", "--no-calibrate-bn", "--no-bf16"))
    assert "calibrated" not in capsys.readouterr().out.splitlines()[-1]
    cal = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "b", "--no-bf16"))  # the default
    done = capsys.readouterr().out.splitlines()[-1]
    assert f"calibrated {cal['eval/acc_calibrated']:.4f} (student_calibrated.pt)" in done
    assert "eval/acc_calibrated" not in plain and cal["curve"] == plain["curve"]  # training itself is the same
    assert not plain["args"]["calibrate_bn"] and cal["args"]["calibrate_bn"]  # args.json says what the run did
    run = next((tmp_path / "b").iterdir())
    trained = common.load_checkpoint(run / "checkpoint.pt")["student"]
    assert all(torch.equal(trained[k], v) for k, v in final_state(tmp_path / "a").items() if k in trained)
    ck = common.load_checkpoint(run / "student_calibrated.pt")
    student = common.build_model("resnet20", 10)
    common.load_state_strict(student, ck["student"], "student_calibrated.pt")
    assert not torch.equal(student.bn1.running_mean, trained["bn1.running_mean"])  # only the statistics differ
    assert torch.equal(student.conv1.weight, trained["conv1.weight"])
    x, y = common.load_split("cifar10", "test", tiny_data)
    _, info = common.load_teacher("resnet20", tiny_teacher)
    assert cal["eval/acc_calibrated"] == common.evaluate(student, x, y, info["mean"], info["std"], 32)
    gn = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "c", "--student-norm", "gn"))  # nothing to calibrate
    assert "eval/acc_calibrated" not in gn and not gn["args"]["calibrate_bn"]
    with pytest.raises(SystemExit, match="student resnet20 has none"):
        kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "d", "--calibrate-bn", "--student-norm", "gn"))


def test_a_plain_state_dict_teacher_needs_and_takes_its_normalization(tiny_data, tiny_teacher, tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(common.load_checkpoint(tiny_teacher)["model"], plain)  # what most users have: model.state_dict()
    with pytest.raises(common.InputError, match="plain state_dict.*--teacher-mean and --teacher-std"):
        kd.main(tiny_args(tiny_data, plain, tmp_path / "a"))
    norm = ["--teacher-mean", "0.4", "0.5", "0.6", "--teacher-std", "0.2", "0.3", "0.4"]
    res = kd.main(tiny_args(tiny_data, plain, tmp_path / "b", *norm))
    model, info = common.load_teacher("resnet20", plain, 10, "cifar10", (0.4, 0.5, 0.6), (0.2, 0.3, 0.4))
    x, y = common.load_split("cifar10", "test", tiny_data)
    assert res["teacher/acc"] == common.evaluate(model, x, y, info["mean"], info["std"], 32)
    # Given for one of our checkpoints, the flags replace its recorded normalization (which the test data differ from).
    _, recorded = common.load_teacher("resnet20", tiny_teacher)
    _, replaced = common.load_teacher("resnet20", tiny_teacher, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    assert recorded["mean"] == (0.5, 0.5, 0.5) and replaced["mean"] == (0.4, 0.5, 0.6)


def test_any_module_plugs_in_as_the_teacher(tiny_data, tmp_path, monkeypatch):
    """The README's bring-your-own-teacher recipe: load_teacher returns a model common.py knows nothing of."""
    torch.manual_seed(0)
    mine = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10)).eval()
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    info = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "test_acc": None, "sha256": "mine", "path": "mine.pt",
            "norm": "bn", "image_size": 32}
    monkeypatch.setattr(kd, "load_teacher", lambda args, k: (mine, info))
    res = kd.main(tiny_args(tiny_data, tmp_path / "unused.pt", tmp_path, "--fit-noise", "--fit-noise-steps", "2"))
    assert res["samples_seen"] == 6 * 16 and res["teacher/sha256"] == "mine"
    assert all(torch.equal(before[k], v) for k, v in mine.float().state_dict().items())


def test_nan_loss_is_a_clear_error(tiny_data, tmp_path):
    model = common.build_model("resnet20")
    with torch.no_grad():
        model.linear.weight.fill_(float("nan"))
    bad = save_teacher(tmp_path / "nan.pt", model)
    # read at the first log / checkpoint step (2 here), before anything is saved
    with pytest.raises(FloatingPointError, match="non-finite at or before step 2 .*teacher logits finite: False"):
        kd.main(tiny_args(tiny_data, bad, tmp_path))
    assert not list(tmp_path.glob("*/checkpoint.pt"))


@pytest.mark.parametrize("balance", ["none", "reweight"])
def test_steps_between_log_lines_do_not_wait_for_the_device(tiny_data, tiny_teacher, tmp_path, monkeypatch, balance):
    reads = host_reads_per_step(monkeypatch, kd, {"cs_rejection_bn.py", "common.py"})
    kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--steps", "12", "--eval-every", "6", "--ckpt-every", "6",
                      "--balance", balance))
    steps_with_reads = {s for s, _, _ in reads if s > 0}
    assert steps_with_reads == {6, 10, 12}, reads  # the log (every 10), evaluation and checkpoint steps only


def test_missing_teacher_says_which_command_makes_one(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "REPO", tmp_path)  # a clone without the ResNet-34 teacher
    with pytest.raises(common.InputError) as e:
        kd.main(["--teacher", "resnet34", "--dataset", "cifar10", "--data-dir", str(tiny_data), "--out-dir", str(tmp_path)])
    cmd = str(e.value).splitlines()[1].split()
    assert cmd[:2] == ["python", "train_teacher.py"] and "resnet34_cifar10_bn.pt" in cmd[-1]
    args = train_teacher.parse_args(cmd[2:])  # the command parses, and it is the README's recipe for the teacher
    assert (args.model, args.dataset, args.norm, args.epochs, args.crop, args.half) == (
        "resnet34", "cifar10", "bn", 30, "image", True)


@pytest.mark.parametrize("script", ["cs_rejection_bn", "batch_align_ln_gn"])
def test_the_warm_up_fits_inside_the_run_and_a_longer_one_is_refused(script):
    parse = importlib.import_module(script).parse_args
    assert parse(["--device", "cpu"]).warmup_steps == 50  # the default run's 8,000 steps (1,000 for batch alignment)
    assert parse(["--device", "cpu", "--steps", "250"]).warmup_steps == 50  # the factor study's arms: as they ran
    assert parse(["--device", "cpu", "--steps", "30"]).warmup_steps == 3  # a short run warms up for a tenth of it
    assert parse(["--device", "cpu", "--steps", "30", "--warmup-steps", "0"]).warmup_steps == 0
    for bad in ("30", "-1"):  # all warm-up, never decaying; or no schedule at all
        with pytest.raises(SystemExit):
            parse(["--device", "cpu", "--steps", "30", "--warmup-steps", bad])
    constant = ["--device", "cpu", "--steps", "30", "--schedule", "constant", "--warmup-steps", "30"]
    assert parse(constant).warmup_steps == 30  # a constant schedule has no warm-up: nothing to refuse


def test_teacher_without_batchnorm_is_refused(tiny_data, tmp_path):
    gn = save_teacher(tmp_path / "gn.pt", common.build_model("resnet20", norm="gn"), norm="gn")
    with pytest.raises(SystemExit, match="no BatchNorm"):
        kd.main(tiny_args(tiny_data, gn, tmp_path))


def test_unknown_student_is_an_argument_error(capsys):
    with pytest.raises(SystemExit):
        kd.parse_args(["--student", "resnet21"])
    assert "invalid choice: 'resnet21'" in capsys.readouterr().err


def test_teacher_trained_on_another_dataset_is_refused(tiny_data, tiny_teacher, tmp_path):
    blob = common.load_checkpoint(tiny_teacher)
    common.save_checkpoint(tmp_path / "svhn.pt", **{**blob, "dataset": "svhn"})
    with pytest.raises(ValueError, match="trained on svhn, not cifar10"):
        kd.main(tiny_args(tiny_data, tmp_path / "svhn.pt", tmp_path))


@pytest.mark.parametrize("flags", [["--eval-every", "0"], ["--max-pools", "0"], ["--batch-size", "1"],
                                   ["--tau", "0"], ["--pool-factor", "0.5"], ["--accept-floor", "2"],
                                   ["--noise-alpha", "-1"], ["--noise-alpha", "30"], ["--fit-noise-steps", "0"],
                                   ["--fit-noise", "--noise-alpha", "2"], ["--loss", "mse", "--tau", "4"],
                                   ["--cs-last-layers", "-1"], ["--teacher-bn", "running", "--cs-last-layers", "3"],
                                   ["--feature-weight", "-1"]])
def test_bad_flag_values_are_argument_errors(flags, capsys):
    with pytest.raises(SystemExit):
        kd.parse_args(flags)
    assert "error:" in capsys.readouterr().err
