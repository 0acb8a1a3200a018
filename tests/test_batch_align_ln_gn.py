"""batch_align_ln_gn.py: the batch-alignment wrapper, and whole runs on generated data."""
import json

import pytest
import torch
import torch.nn.functional as F

import batch_align_ln_gn as ba
import common
import report
from conftest import (assert_same_tensors, crash_after_second_save, final_state, host_reads_per_step, save_teacher,
                      spy_on_loaded_teacher, without_timing)
from conftest import tiny_align_args as tiny_args  # this script's flags; conftest.tiny_args is cs_rejection_bn.py's

# One model per layout the wrapper must handle: GroupNorm(8) and GroupNorm(1) on conv maps, ConvNeXt-style LayerNorm
# over channels (applied to NCHW maps), and LayerNorm on (N, L, D) tokens.
MODELS = [("resnet20", "gn"), ("resnet20", "ln"), ("resnet20", "lnc"), ("vit_tiny", None)]


def fresh(name, norm, seed=0):
    torch.manual_seed(seed)
    return common.build_model(name, 10, norm).eval()


# --- the wrapper -----------------------------------------------------------------------------------------------------
def test_a_vit_teacher_is_taken_as_layernorm_unless_told_otherwise(tmp_path):
    assert ba.parse_args(["--device", "cpu"]).teacher_norm == "gn"  # the shipped GroupNorm ResNet-20
    args = ba.parse_args(["--device", "cpu", "--teacher", "vit_tiny", "--teacher-ckpt", str(tmp_path / "vit.pt"),
                          "--teacher-mean", "0.5", "0.5", "0.5", "--teacher-std", "0.25", "0.25", "0.25"])
    assert args.teacher_norm == "ln"
    torch.save(fresh("vit_tiny", None).state_dict(), tmp_path / "vit.pt")  # a plain state_dict: no norm recorded
    teacher, info = ba.load_teacher(args, 10)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in teacher.modules()) > 0 and info["mean"] == (0.5, 0.5, 0.5)


def test_conv_alignment_is_batchnorm_standardization_without_parameters():
    x = torch.randn(6, 4, 5, 5) * 3 + 1
    expected = F.batch_norm(x, None, None, training=True, eps=ba.ALIGN_EPS)
    torch.testing.assert_close(ba.align(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ba.align(x, strength=0.25), 0.75 * x + 0.25 * expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axes,dims", [("tokens", (0, 1)), ("samples", (0,))])
def test_token_alignment_uses_the_axes_asked_for(axes, dims):
    x = torch.randn(5, 7, 3) * 2 - 1
    mean, var = x.mean(dims, keepdim=True), x.var(dims, keepdim=True, unbiased=False)
    torch.testing.assert_close(ba.align(x, axes), (x - mean) / torch.sqrt(var + ba.ALIGN_EPS), rtol=1e-5, atol=1e-5)
    assert ba.align(x, axes).mean(dims).abs().max() < 1e-5  # zero mean per feature over exactly those axes


def test_alignment_refuses_a_layout_it_does_not_know():
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4, 5, 6\)"):
        ba.align(torch.randn(2, 3, 4, 5, 6))


@pytest.mark.parametrize("name,norm", MODELS)
def test_alignment_makes_one_samples_output_depend_on_the_rest_of_the_batch(name, norm):
    model = fresh(name, norm)
    a = torch.randn(8, 3, 32, 32)
    b = torch.cat([a[:1], torch.randn(7, 3, 32, 32) * 2])  # same first sample, different company
    with torch.no_grad():
        plain = model(a)[0], model(b)[0]
        with ba.batch_aligned(model) as wrapped:
            aligned = model(a)[0], model(b)[0]
    assert len(wrapped) == len(ba.per_sample_norms(model)) > 0
    torch.testing.assert_close(plain[0], plain[1], rtol=1e-4, atol=1e-4)  # per-sample model: no coupling at all
    assert (aligned[0] - aligned[1]).abs().max() > 1e-2  # aligned: sample 0's logits move with the batch


@pytest.mark.parametrize("name,norm", MODELS)
def test_removing_the_wrapper_restores_the_model_bit_for_bit(name, norm):
    model = fresh(name, norm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    z = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        out_before = model(z)
        with ba.batch_aligned(model, strength=0.7):
            out_inside = model(z)
        out_after = model(z)
    assert not torch.allclose(out_inside, out_before)  # it did something while attached...
    assert torch.equal(out_after, out_before)  # ...and nothing after
    assert_same_tensors(before, model.state_dict())
    assert all(not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name,norm", MODELS)
def test_strength_zero_is_the_identity(name, norm):
    model = fresh(name, norm)
    z = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        plain = model(z)
        with ba.batch_aligned(model, strength=0.0) as wrapped:
            zero = model(z)
    assert wrapped and torch.equal(zero, plain)


def test_align_layers_wraps_only_the_first_k_in_forward_order():
    model = fresh("vit_tiny", None)
    names = [n for n, _ in ba.per_sample_norms(model)]
    assert names[:3] == ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1"] and names[-1] == "norm"
    with ba.batch_aligned(model, layers=3) as wrapped:
        assert wrapped == names[:3]
        assert sum(bool(m._forward_pre_hooks) for m in model.modules()) == 3


def test_an_exception_inside_the_context_still_removes_the_wrapper():
    model = fresh("resnet20", "gn")
    with pytest.raises(RuntimeError), ba.batch_aligned(model):
        model(torch.randn(2, 3, 32, 32))
        raise RuntimeError("interrupted")
    assert all(not m._forward_pre_hooks for m in model.modules())


# --- whole runs on generated data ----------------------------------------------------------------------------------
def test_run_trains_the_student_and_leaves_the_teacher_bit_identical(tiny_data, gn_teacher, tmp_path, monkeypatch):
    real_load = common.load_teacher
    loaded = spy_on_loaded_teacher(monkeypatch)
    res = ba.main(tiny_args(tiny_data, gn_teacher, tmp_path))
    fresh_teacher, _ = real_load("resnet20", gn_teacher)
    after = loaded["model"].float().to(memory_format=torch.contiguous_format).state_dict()
    assert_same_tensors(fresh_teacher.state_dict(), after)
    assert all(not m._forward_pre_hooks for m in loaded["model"].modules())

    run = next(tmp_path.glob("cifar10__batch_align_ln_gn__resnet20__s0__*"))
    student = common.load_checkpoint(run / "checkpoint.pt")["student"]
    torch.manual_seed(0)
    init = dict(common.build_model("resnet20").named_parameters())
    assert all(not torch.equal(init[k], student[k]) for k in init)
    for key in ("teacher/acc", "teacher/acc_aligned", "probe/plain_entropy", "probe/aligned_entropy",
                "probe/plain_hist", "eval/acc_running", "noise/label_entropy", "samples_seen", "provenance"):
        assert key in res
    assert sum(res["probe/plain_hist"]) == sum(res["probe/aligned_hist"]) == 32
    assert res["teacher/norm"] == "gn" and len(res["align/layers"]) == 19  # stem + 2 per block in 9 blocks
    assert res["samples_seen"] == 6 * 16 and [row["step"] for row in res["curve"]] == [3, 6]


def test_aligned_steps_between_log_lines_do_not_wait_for_the_device(tiny_data, gn_teacher, tmp_path, monkeypatch):
    reads = host_reads_per_step(monkeypatch, ba, {"batch_align_ln_gn.py", "cs_rejection_bn.py", "common.py"})
    ba.main(tiny_args(tiny_data, gn_teacher, tmp_path, "--steps", "12", "--eval-every", "6", "--ckpt-every", "6",
                      "--balance", "none"))  # rejection must read how many it kept (once per pool)
    assert {s for s, _, _ in reads if s > 0} == {6, 10, 12}, reads  # the log, evaluation and checkpoint steps only


def test_no_alignment_arm_runs_the_plain_teacher(tiny_data, gn_teacher, tmp_path, monkeypatch):
    calls = []
    real = ba.align
    monkeypatch.setattr(ba, "align", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    res = ba.main(tiny_args(tiny_data, gn_teacher, tmp_path, "--align-strength", "0", "--balance", "none"))
    probe_and_eval_calls = len(calls)
    assert res["teacher_samples"] == 6 * 16
    # Alignment ran only in the probe and the aligned teacher-accuracy check, never in the 6 training steps.
    assert probe_and_eval_calls == 19 * (2 + 2)  # probe: 32 samples = 2 batches; test split: 64 images = 2 batches


def test_feature_weight_matches_the_aligned_teachers_stage_outputs_and_logs_both_terms(tiny_data, gn_teacher, tmp_path,
                                                                                       monkeypatch):
    features = []  # the batches the teacher's stage outputs were computed on
    real = ba.teacher_features
    monkeypatch.setattr(ba, "teacher_features", lambda t, z, args: features.append(len(z)) or real(t, z, args))
    real_align = ba.align
    calls = []
    monkeypatch.setattr(ba, "align", lambda *a, **kw: calls.append(1) or real_align(*a, **kw))
    res = ba.main(tiny_args(tiny_data, gn_teacher, tmp_path / "feat", "--feature-weight", "3", "--balance", "none"))
    assert features == [16] * 6 and res["args"]["feature_weight"] == 3
    rows = [r for r in common.MetricsLog.read(next((tmp_path / "feat").glob("*/metrics.jsonl"))) if "train/loss" in r]
    assert rows and all(r["train/loss"] == pytest.approx(r["train/logit_loss"] + 3 * r["train/feature_loss"], rel=1e-5)
                        and r["train/feature_loss"] > 0 for r in rows)
    # the features come from an aligned forward: 19 aligned layers per training step on top of the logits' forward
    plain = len(calls)
    calls.clear()
    ba.main(tiny_args(tiny_data, gn_teacher, tmp_path / "logits", "--balance", "none"))
    assert plain - len(calls) == 6 * 19
    rows = common.MetricsLog.read(next((tmp_path / "logits").glob("*/metrics.jsonl")))
    assert not any("train/feature_loss" in r for r in rows)  # the paper's loss: logits alone, nothing else logged


def test_feature_weight_needs_stages_of_the_same_shapes(tiny_data, gn_teacher, tmp_path):
    with pytest.raises(SystemExit, match="--feature-weight needs stages of the same shapes"):
        ba.main(tiny_args(tiny_data, gn_teacher, tmp_path, "--feature-weight", "1", "--student", "resnet18"))


def test_resume_after_an_interruption_gives_the_same_final_metrics(tiny_data, gn_teacher, tmp_path, monkeypatch):
    whole = ba.main(tiny_args(tiny_data, gn_teacher, tmp_path / "whole"))
    real_save = common.save_checkpoint
    crash_after_second_save(monkeypatch)
    with pytest.raises(SystemExit, match="130"):
        ba.main(tiny_args(tiny_data, gn_teacher, tmp_path / "cut"))
    monkeypatch.setattr(common, "save_checkpoint", real_save)
    run = next((tmp_path / "cut").iterdir())
    resumed = ba.main(["--resume", str(run)])
    assert without_timing(resumed) == without_timing(whole)
    # The wall time counts both processes; provenance names the step where the second one took over.
    prov, prov_whole = resumed["provenance"], whole["provenance"]
    assert prov["resumed_at_steps"] == [4] and prov["wall_time_s"] > prov["process_wall_time_s"] > 0
    assert prov_whole["resumed_at_steps"] == [] and prov_whole["wall_time_s"] == prov_whole["process_wall_time_s"]
    assert_same_tensors(final_state(tmp_path / "cut"), final_state(tmp_path / "whole"))


def test_vit_teacher_runs_end_to_end(tiny_data, tmp_path):
    vit = save_teacher(tmp_path / "vit.pt", fresh("vit_tiny", None, 3), arch="vit_tiny", norm="ln")
    res = ba.main(tiny_args(tiny_data, vit, tmp_path, "--teacher", "vit_tiny", "--steps", "2", "--eval-every", "2",
                            "--align-axes", "samples"))
    assert res["teacher/norm"] == "ln" and len(res["align/layers"]) == 13 and res["samples_seen"] == 32


def test_a_batchnorm_teacher_is_accepted_and_the_wrapper_says_it_does_nothing(tiny_data, tiny_teacher, tmp_path,
                                                                              capsys):
    res = ba.main(tiny_args(tiny_data, tiny_teacher, tmp_path, "--steps", "2", "--eval-every", "2"))
    assert "alignment wraps nothing" in capsys.readouterr().out
    assert res["align/layers"] == [] and res["probe/plain_hist"] == res["probe/aligned_hist"]
    assert res["teacher/acc_aligned"] == res["teacher/acc"]


def test_missing_default_teacher_says_which_command_makes_one(tiny_data, tmp_path):
    with pytest.raises(common.InputError, match="train_teacher.py --model resnet32 --norm lnc"):
        ba.main(["--teacher", "resnet32", "--teacher-norm", "lnc", "--data-dir", str(tiny_data),
                 "--out-dir", str(tmp_path)])


@pytest.mark.parametrize("flags", [["--align-strength", "1.5"], ["--align-strength", "-0.1"], ["--align-layers", "-1"],
                                   ["--align-axes", "channels"], ["--batch-size", "1"], ["--probe-samples", "1"],
                                   ["--feature-weight", "-1"]])
def test_bad_flag_values_are_argument_errors(flags, capsys):
    with pytest.raises(SystemExit):
        ba.parse_args(flags)
    assert "error:" in capsys.readouterr().err


def test_the_report_renders_the_arms_it_has(tiny_data, gn_teacher, tmp_path, tmp_results):
    (tmp_results / "batch_align").mkdir(parents=True)
    for arm, flags in (("plain", ["--align-strength", "0", "--balance", "none"]), ("align_reject", [])):
        res = ba.main(tiny_args(tiny_data, gn_teacher, tmp_path / arm, "--steps", "2", "--eval-every", "2", *flags))
        (tmp_results / "batch_align" / f"gn__{arm}.json").write_text(json.dumps(res))
    block = report.batch_align_block()
    gn_row = next(line for line in block.splitlines() if line.startswith("| ResNet-20, GroupNorm(8)"))
    # the align and align_feat10 arms are missing: "-" for the aligned entropy, "not run yet" for the students
    assert gn_row.count("not run yet") == 2 and "%), - |" in gn_row
    assert "| ViT-tiny, LayerNorm | not run yet |" in block
    (tmp_results / "batch_align" / "vit__plain.json").write_text(json.dumps(res))  # any arm of a ViT teacher
    vit_row = next(line for line in report.batch_align_block().splitlines() if line.startswith("| ViT-tiny"))
    assert vit_row.endswith("| not run yet | not run yet | n/a (no stages like the student's) |")  # it cannot be run
    res["provenance"]["device"] = "elsewhere"  # the align_reject arm, run on another machine, is named as such
    (tmp_results / "batch_align" / "gn__align_reject.json").write_text(json.dumps(res))
    device = json.loads((tmp_results / "batch_align" / "gn__plain.json").read_text())["provenance"]["device"]
    assert f'Measured on {device}; the runs "ResNet-20, GroupNorm(8): alignment + rejection" on elsewhere.' in \
        report.batch_align_block()
    report.batch_align_figure(tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 10_000
