"""vit_failure_analysis.py: the metrics on constructed cases, the models at other sizes, a run end to end."""
import math
import re

import pytest
import torch
import torch.nn as nn

import common
import report
import vit_failure_analysis as vfa
from conftest import save_teacher


def test_uniform_attention_has_entropy_log_L_and_one_hot_has_zero():
    L = 17
    assert vfa.attention_entropy(torch.full((2, 4, L, L), 1 / L)) == pytest.approx(math.log(L), rel=1e-6)
    assert vfa.attention_entropy(torch.eye(L).expand(2, 4, L, L)) == pytest.approx(0.0, abs=1e-9)


def test_identical_tokens_have_cosine_one_and_orthogonal_ones_zero():
    same = torch.randn(1, 8).expand(5, 8)
    assert vfa.mean_pairwise_cosine(same) == pytest.approx(1.0, abs=1e-6)
    assert vfa.mean_pairwise_cosine(torch.eye(6)) == pytest.approx(0.0, abs=1e-7)
    # (N, M, D): the average over the N sets of their within-set means
    assert vfa.mean_pairwise_cosine(torch.stack([torch.eye(4), torch.ones(4, 4)])) == pytest.approx(0.5, abs=1e-6)


class ConstantLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(10))

    def forward(self, x):
        return self.bias.expand(len(x), -1) + 0 * x.mean()


def test_a_constant_logit_model_has_zero_between_sample_variance():
    assert vfa.between_sample_variance(ConstantLogits()(torch.randn(64, 3, 8, 8))) == 0.0
    assert vfa.between_sample_variance(torch.randn(4096, 10)) == pytest.approx(1.0, rel=0.1)


def test_loglog_slope_recovers_a_power_law():
    assert vfa.loglog_slope([16, 64, 256], [3 / 16, 3 / 64, 3 / 256]) == pytest.approx(-1.0)


def test_vit_at_another_size_keeps_its_weights_and_is_exact_at_its_own():
    torch.manual_seed(0)
    vit = common.build_model("vit_tiny").eval()
    assert vfa.at_size(vit, 32) is vit
    big = vfa.at_size(vit, 48)
    assert big.pos_embed.shape == (1, 1 + 12 * 12, 128) and vit.pos_embed.shape == (1, 65, 128)
    assert torch.equal(big.pos_embed[:, 0], vit.pos_embed[:, 0]) and torch.equal(big.head.weight, vit.head.weight)
    assert big(torch.randn(2, 3, 48, 48)).shape == (2, 10)


def test_recording_sees_every_attention_layer_block_and_the_pooled_features():
    torch.manual_seed(0)
    vit = common.build_model("vit_tiny").eval()
    with torch.no_grad(), vfa.recording(vit) as rec:
        vit(torch.randn(4, 3, 32, 32))
    assert len(rec["attn_entropy"]) == len(rec["token_cosine"]) == 6 and rec["tokens"] == 64
    assert all(0 < h <= math.log(65) + 1e-5 for h in rec["attn_entropy"]) and rec["pooled"].shape == (4, 128)
    cnn = common.build_model("resnet20", norm="gn").eval()
    with torch.no_grad(), vfa.recording(cnn) as rec:
        cnn(torch.randn(4, 3, 32, 32))
    assert rec["attn_entropy"] == [] and len(rec["token_cosine"]) == 9 and rec["tokens"] == 64
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cnn.modules())


def test_bf16_runs_the_models_in_bfloat16_and_gives_the_fp32_metrics_up_to_rounding():
    torch.manual_seed(0)
    cnn = common.build_model("resnet20", norm="gn").eval()
    dtypes = []
    hook = cnn.linear.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    x = torch.randn(8, 3, 32, 32)
    fp32 = vfa.measure(cnn, x, 4, False, "samples")
    bf16 = vfa.measure(cnn, x, 4, False, "samples", bf16=True)
    hook.remove()
    assert dtypes == [torch.float32] * 2 + [torch.bfloat16] * 2  # two batches each
    assert bf16.keys() == fp32.keys() and bf16["logit_var"] != fp32["logit_var"]
    assert bf16["logit_var"] == pytest.approx(fp32["logit_var"], rel=0.1)
    assert bf16["sample_cosine"] == pytest.approx(fp32["sample_cosine"], abs=0.02)


def test_the_analysis_runs_end_to_end_on_tiny_models(tiny_data, tiny_teacher, tmp_path):
    torch.manual_seed(1)
    vit = save_teacher(tmp_path / "vit.pt", common.build_model("vit_tiny"), arch="vit_tiny", norm="ln")
    gn = save_teacher(tmp_path / "gn.pt", common.build_model("resnet20", norm="gn"), norm="gn")
    before = common.load_checkpoint(vit)["model"]
    res = vfa.main(["--teacher-ckpts", str(vit), str(gn), str(tiny_teacher), "--data-dir", str(tiny_data),
                    "--sizes", "8", "16", "32", "--probe-samples", "16", "--batch-size", "8", "--out-dir", str(tmp_path),
                    "--copy-results-to", str(tmp_path / "copy.json")])
    assert len(res["rows"]) == 3 * 3 * 2 * 2  # models x sizes x (noise, real) x (plain, coupled)
    assert {r["model"] for r in res["rows"]} == {"vit_tiny/ln", "resnet20/gn", "resnet20/bn"}
    vit_rows = [r for r in res["rows"] if r["arch"] == "vit_tiny"]
    assert sorted({r["tokens"] for r in vit_rows}) == [4, 16, 64] and all(len(r["attn_entropy_norm"]) == 6 for r in vit_rows)
    predictions = {(c["model"], c["prediction"][:2]) for c in res["checks"]}
    assert {("vit_tiny/ln", p) for p in ("P1", "P2", "P3", "P4", "P5")} <= predictions
    assert ("resnet20/bn", "P1") not in predictions and ("resnet20/bn", "P4") in predictions
    assert all(isinstance(c["holds"], bool) for c in res["checks"])
    assert (tmp_path / "copy.json").is_file()
    after = common.load_checkpoint(vit)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_missing_teacher_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(SystemExit, match="nowhere.pt does not exist"):
        vfa.main(["--teacher-ckpts", str(tmp_path / "nowhere.pt"), "--data-dir", str(tiny_data)])


@pytest.mark.parametrize("flags", [["--sizes", "30"], ["--sizes", "16", "24"],  # no 32: nothing to compare with
                                   ["--probe-samples", "8", "--batch-size", "16"], ["--batch-size", "1"]])
def test_bad_flag_values_are_argument_errors(flags, capsys):
    with pytest.raises(SystemExit):
        vfa.parse_args(flags)
    assert "error:" in capsys.readouterr().err


def test_the_report_renders_the_analysis_and_its_checks(tiny_data, tmp_path, tmp_results):
    torch.manual_seed(1)
    vit = save_teacher(tmp_path / "vit.pt", common.build_model("vit_tiny"), arch="vit_tiny", norm="ln")
    vfa.main(["--teacher-ckpts", str(vit), "--data-dir", str(tiny_data), "--sizes", "8", "16", "32", "--probe-samples", "16",
              "--batch-size", "8", "--out-dir", str(tmp_path), "--copy-results-to",
              str(tmp_results / "vit_failure" / "analysis.json")])
    block = report.vit_failure_block()
    assert "| vit_tiny/ln (" in block and block.count("| vit_tiny/ln | P") == 5
    report.vit_failure_figure(tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 10_000


def test_the_readme_states_the_account_of_the_docstring():
    # bench/report.py keeps the account as the README shows it (a list of predictions); word for word, it is the one
    # this script's docstring states and checks
    block = report.BLOCKS["vit_account"]()
    assert [line[4:6] for line in block.splitlines() if line.startswith("- **P")] == ["P1", "P2", "P3", "P4", "P5"]
    words = lambda text: " ".join(re.sub(r"^- \*\*(P\d)\*\*", r"\1", text, flags=re.M).split())
    assert words(block).startswith("Cut an image of iid N(0, 1) pixels") and words(block) in words(vfa.__doc__)
    assert "python vit_failure_analysis.py" not in block  # the usage line is not part of the account


def test_attention_entropy_of_bf16_attention_is_computed_in_fp32():
    attn = torch.softmax(torch.randn(2, 4, 65, 65, generator=torch.Generator().manual_seed(0)), -1).bfloat16()
    exact = -(attn.double() * attn.double().log()).sum(-1).mean().item()
    assert vfa.attention_entropy(attn) == pytest.approx(exact, rel=1e-5)
