"""bn_ablation.py: the per-layer BatchNorm switch against hand computation, the sweeps' end points, a tiny sweep."""
import json

import pytest
import torch
import torch.nn as nn

import bn_ablation as ab
import common
import report


def bn_with_stats():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5])), bn.running_var.copy_(torch.tensor([4.0, 0.25, 9.0]))
    return bn.eval()


@pytest.mark.parametrize("mean,var,affine", [(m, v, a) for m in ("cs", "running") for v in ("cs", "running")
                                             for a in (True, False)])
def test_each_component_comes_from_where_the_switch_says(mean, var, affine):
    bn, x = bn_with_stats(), torch.randn(6, 3, 4, 4) * 3 + 1
    mu = x.mean((0, 2, 3)) if mean == "cs" else bn.running_mean
    sigma2 = x.var((0, 2, 3), unbiased=False) if var == "cs" else bn.running_var
    hand = (x - mu.view(1, -1, 1, 1)) / torch.sqrt(sigma2.view(1, -1, 1, 1) + bn.eps)
    if affine:
        hand = hand * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    with ab.bn_config(bn, [{"mean": mean, "var": var, "affine": affine}]):
        out = bn(x)
    assert torch.allclose(out, hand, atol=1e-5)


def test_running_equals_eval_mode_and_cs_equals_train_mode_batch_norm():
    bn, x = bn_with_stats(), torch.randn(6, 3, 4, 4)
    with ab.bn_config(bn, [ab.RUNNING]):
        assert torch.allclose(bn(x), nn.BatchNorm2d.forward(bn, x), atol=1e-5)  # the class's own eval-mode forward
    buffers = [b.clone() for b in bn.buffers()]
    with ab.bn_config(bn, [ab.CS]):
        cs = bn(x)
    train_copy = bn_with_stats().train()
    assert torch.allclose(cs, train_copy(x), atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(buffers, bn.buffers()))  # ours never writes the buffers


def test_k0_is_full_cs_and_kL_is_eval_mode_on_a_whole_teacher(tiny_teacher):
    teacher, _ = common.load_teacher("resnet20", tiny_teacher)
    names = [n for n, _ in ab.bn_layers(teacher)]
    assert len(names) == 19 and names[0] == "bn1" and names[-1] == "layer3.2.bn2"
    points = {name: cfg for name, _, cfg in ab.sweep_points("first-k", names)}
    assert len(points) == 20
    z = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        eval_out = teacher(z)
        with ab.bn_config(teacher, points["first-19"]):
            assert torch.allclose(teacher(z), eval_out, atol=1e-4)
        with ab.bn_config(teacher, points["first-0"]):
            cs = teacher(z)
        train_copy = common.load_teacher("resnet20", tiny_teacher)[0].train()
        assert torch.allclose(cs, train_copy(z), atol=1e-3)
    assert torch.allclose(teacher(z), eval_out)  # the switch is gone after the context


def test_sweeps_put_running_statistics_where_they_say():
    names = ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1", "layer2.0.bn2"]
    mode = lambda cfgs: "".join("R" if c["mean"] == "running" else "C" for c in cfgs)
    first = {n: mode(c) for n, _, c in ab.sweep_points("first-k", names)}
    last = {n: mode(c) for n, _, c in ab.sweep_points("last-k", names, k_list=[0, 2, 9])}
    stage = {n: mode(c) for n, _, c in ab.sweep_points("stage", names)}
    assert first["first-2"] == "RRCCC" and last == {"last-0": "CCCCC", "last-2": "CCCRR"}
    assert stage == {"stage-stem": "RCCCC", "stage-layer1": "CRRCC", "stage-layer2": "CCCRR"}
    comps = {n: c[0] for n, _, c in ab.sweep_points("components", names)}
    assert comps["cs-mean"] == {"mean": "cs", "var": "running", "affine": True}
    assert comps["cs-var-no-affine"] == {"mean": "running", "var": "cs", "affine": False} and len(comps) == 6


def test_a_tiny_sweep_runs_end_to_end_and_resumes(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    real_distill = ab.distill
    argv = ["--data-dir", str(tiny_data), "--teacher-ckpt", str(tiny_teacher), "--out-dir", str(tmp_path),
            "--sweep", "first-k", "components", "--k-list", "0", "19", "--distill-k", "0",
            "--distill-points", "cs-var", "cs-both", "--probe-samples", "64", "--batch-size", "32", "--steps", "3",
            "--eval-batch-size", "32"]
    trained = []
    monkeypatch.setattr(ab, "distill", lambda *a, **kw: trained.append(a[-1]) or real_distill(*a, **kw))
    res = ab.main(argv)
    rows = {r["point"]: r for r in res["points"]}
    assert list(rows) == ["first-k/first-0", "first-k/first-19", "components/cs-mean", "components/cs-var",
                          "components/cs-both", "components/cs-mean-no-affine", "components/cs-var-no-affine",
                          "components/cs-both-no-affine"]
    assert "eval/acc_running" in rows["first-k/first-0"] and "eval/agreement_batchstats" in rows["components/cs-var"]
    assert "eval/acc_running" not in rows["first-k/first-19"]
    # cs-both with affine is first-0 under another name: the same teacher accuracy and noise labels, and its student
    # is first-0's rather than a second identical training
    assert rows["components/cs-both"]["teacher/acc"] == rows["first-k/first-0"]["teacher/acc"]
    assert rows["components/cs-both"]["noise/label_entropy"] == rows["first-k/first-0"]["noise/label_entropy"]
    assert trained == ["first-k/first-0", "components/cs-var"]
    assert rows["components/cs-both"]["student_of"] == "first-k/first-0"
    assert rows["components/cs-both"]["eval/agreement_running"] == rows["first-k/first-0"]["eval/agreement_running"]
    run = next(tmp_path.iterdir())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")  # as if stopped after three points
    again = ab.main(["--resume", str(run)])
    timeless = lambda points: [{k: v for k, v in r.items() if k != "wall_s"} for r in points]
    assert timeless(again["points"]) == timeless(res["points"])
    assert again["points"][:3] == res["points"][:3]  # the three points kept, with the time they took then
    prov = again["provenance"]  # the sweep's time over both processes, not the last one's alone
    assert prov["wall_time_s"] == round(sum(r["wall_s"] for r in again["points"]), 1)
    assert prov["resumed_at_steps"] == [3]


def test_stage_norms_put_groupnorm_in_the_first_k_stages():
    model = common.build_model("resnet20", norm="gn-gn-bn")
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))}
    assert kinds["bn1"] == kinds["layer1.0.bn1"] == kinds["layer2.2.bn2"] == "GroupNorm"
    assert kinds["layer3.0.bn1"] == "BatchNorm2d" and len(ab.bn_layers(model)) == 6
    with pytest.raises(ValueError, match="one per stage"):
        common.build_model("resnet20", norm="gn-bn")


def test_the_retrain_sweep_trains_missing_teachers_once_and_distils_from_each(tiny_data, tiny_teacher, tmp_path,
                                                                               monkeypatch, capsys):
    monkeypatch.setattr(common, "REPO", tmp_path)  # retrained teachers go to tmp_path/teachers, not the repo's
    calls = []
    real_train = ab.train_teacher

    def small_train(argv):  # the shipped recipe, on 64 generated images: a smaller batch
        calls.append(argv)
        return real_train(argv + ["--batch-size", "16"])
    monkeypatch.setattr(ab, "train_teacher", small_train)
    argv = ["--data-dir", str(tiny_data), "--teacher-ckpt", str(tiny_teacher), "--out-dir", str(tmp_path / "runs"),
            "--sweep", "retrain", "--retrain-k", "1", "2", "--probe-samples", "32", "--batch-size", "16",
            "--steps", "2", "--eval-batch-size", "32", "--retrain-epochs", "1"]
    skipped = ab.main(argv)
    assert skipped["points"] == [] and "--retrain trains it" in capsys.readouterr().out and not calls
    res = ab.main(argv + ["--retrain"])
    assert [c[c.index("--norm") + 1] for c in calls] == ["gn-bn-bn", "gn-gn-bn"]
    assert all(c[c.index("--device") + 1] == "cpu" and ("--bf16" in c) != ("--no-bf16" in c) for c in calls)
    assert (tmp_path / "teachers" / "resnet20_cifar10_gn-bn-bn.pt").is_file()
    rows = {r["point"]: r for r in res["points"]}
    assert list(rows) == ["retrain/gn-stages-1", "retrain/gn-stages-2"]
    assert all("eval/acc_running" in r and "eval/agreement_running" in r for r in rows.values())
    again = ab.main(argv + ["--retrain"])  # the teachers exist now: nothing is trained twice
    assert len(calls) == 2 and [r["point"] for r in again["points"]] == list(rows)
    with pytest.raises(common.InputError, match="trained for 1 epochs, not --retrain-epochs 3"):
        ab.main(argv + ["--retrain", "--retrain-epochs", "3"])  # a sweep never mixes teachers of other lengths


def test_sweep_values_that_name_no_point_are_refused_in_one_line(tiny_data, tiny_teacher, tmp_path, monkeypatch):
    argv = ["--data-dir", str(tiny_data), "--teacher-ckpt", str(tiny_teacher), "--out-dir", str(tmp_path / "runs"),
            "--probe-samples", "32", "--batch-size", "16", "--steps", "2", "--eval-batch-size", "32"]
    with pytest.raises(common.InputError, match=r"--k-list \[20\]: k must be 0 to 19"):
        ab.main(argv + ["--sweep", "first-k", "--k-list", "0", "20"])
    with pytest.raises(common.InputError, match=r"--distill-points \['cs_mean'\].*choose from .*cs-mean"):
        ab.main(argv + ["--sweep", "components", "--distill-points", "cs_mean"])  # a typo of cs-mean
    assert not list((tmp_path / "runs").glob("*/metrics.jsonl"))  # refused before any point ran
    with pytest.raises(SystemExit):  # before any sweep runs, not when the sweep reaches retrain
        ab.parse_args(["--teacher", "resnet18", "--sweep", "first-k", "retrain"])
    with pytest.raises(SystemExit):  # the histogram is of whole CS batches: 100 samples would be 256
        ab.parse_args(["--probe-samples", "100"])
    monkeypatch.setattr(ab.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(
        ab.subprocess.CalledProcessError(1, "train_teacher.py")))
    with pytest.raises(common.InputError, match="train_teacher.py .*failed \\(exit status 1\\)"):
        ab.train_teacher(["--model", "resnet20"])


def test_the_report_renders_sweeps_twins_and_a_retrain_only_file(tiny_data, tiny_teacher, tmp_path, monkeypatch,
                                                                   tmp_results):
    small = ["--data-dir", str(tiny_data), "--probe-samples", "32", "--batch-size", "16", "--steps", "2",
             "--eval-batch-size", "32"]
    sweep = ab.main([*small, "--teacher-ckpt", str(tiny_teacher), "--out-dir", str(tmp_path / "runs"), "--sweep",
                     "first-k", "last-k", "--k-list", "0", "19", "--distill-k", "0", "19"])
    real_points = ab.retrain_points
    monkeypatch.setattr(ab, "retrain_points", lambda args: [(p, k, tiny_teacher, t) for p, k, _, t in real_points(args)])
    retrain = ab.main([*small, "--teacher-ckpt", str(tiny_teacher), "--out-dir", str(tmp_path / "runs"), "--sweep",
                       "retrain", "--retrain-k", "0", "1"])  # the tiny teacher stands in for each retrained one
    (tmp_results / "bn_ablation").mkdir(parents=True)
    for name, res in (("sweep", sweep), ("retrain", retrain)):
        (tmp_results / "bn_ablation" / f"{name}.json").write_text(json.dumps(res))
    block = report.bn_ablation_block()
    assert "| last-k/last-0 |" in block and "(the student of first-k/first-0: same configuration)" in block
    assert "| retrain/gn-stages-1 |" in block
    report.bn_ablation_figures()
    assert all((tmp_results / f"bn_ablation_{n}.png").stat().st_size > 10_000 for n in ("sweep", "retrain"))
