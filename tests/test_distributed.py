"""torchrun with 2 processes on this CPU (gloo): the same method as one process, not a different one. With the batch
split over ranks, the CS teacher, the aligned teacher and the sampler's label marginal are those of the global batch,
and a few distillation steps give the student a single process gives."""
import socket
import subprocess
import sys

import pytest
import torch

import batch_align_ln_gn as ba
import common
import cs_rejection_bn as kd
from conftest import REPO, final_state, tiny_args


def torchrun(*args, nproc=2):
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(port), *map(str, args)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_coupled_teachers_and_the_sampler_see_the_global_batch(tiny_teacher, gn_teacher, tmp_path):
    torchrun(REPO / "tests" / "dist_worker.py", tiny_teacher, gn_teacher, tmp_path / "out.pt")
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    z = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bn, _ = common.load_teacher("resnet20", tiny_teacher)
    gn, _ = common.load_teacher("resnet20", gn_teacher)
    with torch.no_grad():
        bn_one = kd.teacher_forward(bn, z, "cs")
        with ba.batch_aligned(gn):
            gn_one = gn(z)
        half = kd.teacher_forward(bn, z[:8], "cs")  # control: CS on one rank's half alone is something else
    torch.testing.assert_close(got["bn"], bn_one, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["gn"], gn_one, rtol=1e-4, atol=1e-4)
    assert (half - bn_one[:8]).abs().max() > 1e-3
    sampler = kd.RejectionSampler(10, 0.9, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(got["counts"], sampler.update(bn_one.argmax(1)))
    assert all(torch.allclose(m, sampler.marginal.float()) for m in got["marginals"])  # one global marginal
    assert torch.equal(got["keep"].bool(), sampler.accept(bn_one.argmax(1)))  # the same coins, the same decisions


@pytest.mark.parametrize("student, extra", [("bn", []), ("gn", []), ("bn", ["--feature-weight", "1"])])
def test_a_few_steps_under_torchrun_give_the_single_process_student(tiny_data, tiny_teacher, tmp_path, student,
                                                                     extra):
    # SGD: Adam divides by sqrt(v) + 1e-8, which blows float rounding up for gradients near 1e-8 (found here: with
    # Adam the two runs differ by up to 2e-3 in a weight after one step, rounding only; with SGD by 1e-6).
    flags = ["--balance", "none", "--no-bf16", "--student-norm", student, "--optimizer", "sgd", *extra]
    one = kd.main(tiny_args(tiny_data, tiny_teacher, tmp_path / "one", *flags))
    torchrun(REPO / "cs_rejection_bn.py", *tiny_args(tiny_data, tiny_teacher, tmp_path / "two", *flags))
    a, b = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert a.keys() == b.keys()
    torch.manual_seed(0)
    init = common.build_model("resnet20", 10, student).state_dict()  # the student before its 6 steps
    for k in (k for k in a if not k.startswith("opt.")):  # the student, up to float rounding (sums in another order)
        # Rounding differences grow over the steps through the CS teacher on noise: measured up to 1.6% of how far a
        # tensor moved (with the threads of the two runs set alike or not); a method error moves it by its own size.
        moved, gap = (a[k].double() - init[k].double()).abs().max(), (b[k].double() - a[k].double()).abs().max()
        assert gap <= 0.05 * moved + 1e-6, f"{k}: the two runs differ by {gap:.2e}, the tensor moved {moved:.2e}"
    two = common.load_checkpoint(next((tmp_path / "two").iterdir()) / "checkpoint.pt")
    assert two["stats"]["student_samples"] == one["samples_seen"] and two["stats"]["teacher_samples"] == 6 * 16


def test_rejection_and_alignment_run_under_torchrun(tiny_data, gn_teacher, tmp_path):
    out = torchrun(REPO / "batch_align_ln_gn.py", "--data-dir", tiny_data, "--teacher-ckpt", gn_teacher, "--out-dir",
                   tmp_path, "--steps", "3", "--batch-size", "16", "--eval-every", "3", "--eval-batch-size", "32",
                   "--probe-samples", "32", "--balance", "reject", "--no-bf16")
    assert out.stdout.count("run folder") == 1  # rank 0 alone reports
    runs = list(tmp_path.glob("cifar10__batch_align_ln_gn__*"))
    assert len(runs) == 1  # and alone writes
    res = __import__("json").loads((runs[0] / "results.json").read_text())
    assert res["samples_seen"] == 3 * 16 and sum(res["probe/aligned_hist"]) == 32
    assert res["noise/accepted_hist"] and sum(res["noise/accepted_hist"]) == 3 * 16


def test_a_batch_that_does_not_split_is_refused(tiny_data, tiny_teacher, tmp_path):
    with pytest.raises(AssertionError, match="must be a multiple of the 2 processes"):
        torchrun(REPO / "cs_rejection_bn.py", *tiny_args(tiny_data, tiny_teacher, tmp_path, "--batch-size", "15"))


def test_the_bn_ablation_under_torchrun_gives_the_single_process_teacher_diagnostics(tiny_data, tiny_teacher, tmp_path):
    argv = ["--data-dir", tiny_data, "--teacher-ckpt", tiny_teacher, "--sweep", "first-k", "--k-list", "0", "5",
            "--distill-k", "0", "--probe-samples", "64", "--batch-size", "16", "--steps", "2", "--eval-batch-size", "32",
            "--no-bf16"]
    import bn_ablation
    one = bn_ablation.main([*map(str, argv), "--out-dir", str(tmp_path / "one")])
    torchrun(REPO / "bn_ablation.py", *argv, "--out-dir", tmp_path / "two")
    two = __import__("json").loads(next((tmp_path / "two").iterdir()).joinpath("results.json").read_text())
    assert [a["point"] for a in one["points"]] == [b["point"] for b in two["points"]] == ["first-k/first-0",
                                                                                       "first-k/first-5"]
    for a, b in zip(one["points"], two["points"]):  # CS on the global batch: the same labels and teacher accuracy
        assert a["noise/label_entropy"] == pytest.approx(b["noise/label_entropy"], abs=1e-6)
        assert a["teacher/acc"] == pytest.approx(b["teacher/acc"], abs=1 / 64 + 1e-9)  # a rounding flip at most
    assert "eval/acc_running" in two["points"][0]
