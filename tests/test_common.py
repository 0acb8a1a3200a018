"""common.py: models, checkpoints, data cache, noise, evaluation."""
import math

import numpy as np
import pytest
import torch

import common
from conftest import SHARED

SHARED_TEACHERS = [("resnet20", "akamaster_resnet20-12fca82f.th", 0.9173),
                   ("resnet56", "akamaster_resnet56-4bfd9763.th", 0.9339)]


@pytest.mark.parametrize("name,filename,expected", SHARED_TEACHERS)
def test_shared_teachers_load_and_reproduce_their_accuracy(name, filename, expected):
    ckpt, data = SHARED / "teachers" / filename, SHARED / "data"
    if not (ckpt.is_file() and (data / "cifar10_test.npz").is_file()):
        pytest.skip(f"{ckpt} or the CIFAR-10 cache is not here")
    model, info = common.load_teacher(name, ckpt)
    assert info["mean"] == common.IMAGENET_STATS[0]  # akamaster teachers use ImageNet normalization
    x, y = common.load_split("cifar10", "test", data)
    acc = common.evaluate(model, x, y, info["mean"], info["std"], batch_size=500)
    assert abs(acc - expected) <= 0.0005, acc


@pytest.mark.parametrize("name", [n for n in common.MODEL_NAMES if n != "imagenet_vit_b_16"])  # that one: 224 only
def test_every_model_builds_and_maps_32x32_images_to_logits(name):
    model = common.build_model(name, num_classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("norm", ["lnc", "gn-bn-bn"])
def test_channel_layernorm_and_per_stage_norms_build(norm):
    model = common.build_model("resnet20", norm=norm)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    if norm == "lnc":  # LayerNorm over C at every position: the output has zero mean over channels
        x = torch.randn(2, 16, 5, 5) * 3 + 1
        assert model.bn1(x).mean(1).abs().max() < 1e-5


@pytest.mark.parametrize("norm,layer", [("bn", torch.nn.BatchNorm2d), ("gn", torch.nn.GroupNorm),
                                        ("ln", torch.nn.GroupNorm)])
def test_norm_choice_reaches_every_layer(norm, layer):
    model = common.build_model("resnet20", norm=norm)
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))]
    assert len(norms) == 19 and all(type(m) is layer for m in norms)
    if norm == "ln":  # one group: normalize over (C, H, W) of each sample
        assert all(m.num_groups == 1 for m in norms)


def test_memory_format_is_channels_last_on_cpu_except_for_grouped_groupnorm():
    assert common.memory_format(common.build_model("resnet20"), bf16=False) == torch.channels_last
    assert common.memory_format(common.build_model("resnet20", norm="gn"), bf16=True) == torch.contiguous_format
    assert common.memory_format(common.build_model("resnet20", norm="ln"), bf16=False) == torch.channels_last


def test_akamaster_layout_matches_the_published_parameter_count():
    assert sum(p.numel() for p in common.build_model("resnet20").parameters()) == 269_722
    assert sum(p.numel() for p in common.build_model("resnet56").parameters()) == 853_018


def test_unknown_model_and_norm_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'resnet21'.*resnet20"):
        common.build_model("resnet21")
    with pytest.raises(ValueError, match="unknown norm"):
        common.build_model("resnet20", norm="batch")
    with pytest.raises(ValueError, match="LayerNorm only"):
        common.build_model("vit_tiny", norm="bn")


def test_mismatched_checkpoint_lists_missing_and_unexpected_keys(tiny_teacher):
    with pytest.raises(ValueError, match="holds a resnet20, not a resnet32"):
        common.load_teacher("resnet32", tiny_teacher)
    blob = common.load_checkpoint(tiny_teacher)
    blob["arch"] = "resnet32"
    common.save_checkpoint(tiny_teacher.with_name("relabelled.pt"), **blob)
    with pytest.raises(ValueError, match=r"missing keys \(60\).*layer1\.3\.bn1\.bias"):
        common.load_teacher("resnet32", tiny_teacher.with_name("relabelled.pt"))
    with pytest.raises(ValueError, match=r"shape mismatches \(2\).*linear\.bias: checkpoint \(10,\) vs model \(100,\)"):
        common.load_teacher("resnet20", tiny_teacher, num_classes=100)


def test_akamaster_format_loads_with_prefix_stripped(tmp_path):
    model = common.build_model("resnet20")
    state = {"module." + k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "best_prec1": 91.5}, tmp_path / "aka.th")
    loaded, info = common.load_teacher("resnet20", tmp_path / "aka.th")
    assert info["test_acc"] == pytest.approx(0.915) and info["mean"] == common.IMAGENET_STATS[0]
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters()))


def test_load_refuses_pickled_code(tmp_path):
    torch.save({"model": common.build_model("resnet20")}, tmp_path / "pickled.pt")  # a whole module, not tensors
    with pytest.raises(Exception, match="[Ww]eights only"):
        common.load_teacher("resnet20", tmp_path / "pickled.pt")


def test_missing_dataset_offline_names_the_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(common, "_download", offline)
    with pytest.raises(FileNotFoundError, match=r"cifar10_test\.npz is missing.*no network"):
        common.load_split("cifar10", "test", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        common.load_split("mnist", "test", tmp_path)


def test_download_writes_the_cache_once(tmp_path, monkeypatch):
    calls = []

    def fake_download(name, split, root):
        calls.append(split)
        return np.full((5, 32, 32, 3), 7, np.uint8), np.arange(5)
    monkeypatch.setattr(common, "_download", fake_download)
    x1, y1 = common.load_split("cifar10", "train", tmp_path)
    x2, y2 = common.load_split("cifar10", "train", tmp_path)
    assert calls == ["train"] and (tmp_path / "cifar10_train.npz").is_file()
    assert x1.dtype == torch.uint8 and x1.shape == (5, 32, 32, 3) and torch.equal(x1, x2) and torch.equal(y2, torch.arange(5))


def test_batchstats_evaluation_leaves_running_statistics_untouched(tiny_teacher, tiny_data):
    model, info = common.load_teacher("resnet20", tiny_teacher)
    x, y = common.load_split("cifar10", "test", tiny_data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    common.evaluate(model, x, y, info["mean"], info["std"], batch_size=16, bn_stats="batch")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_the_two_protocols_differ_where_running_statistics_do_not_fit():
    # A BN "model" whose running statistics are far off the data: running mode misclassifies, batch mode does not.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1, bias=False), torch.nn.BatchNorm2d(2),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
        model[1].running_mean.copy_(torch.tensor([10.0, -10.0]))
    x = torch.zeros(4, 2, 2, 3, dtype=torch.uint8)
    x[:2, ..., 0], x[2:, ..., 1] = 255, 255  # class 0 bright in R, class 1 bright in G
    y = torch.tensor([0, 0, 1, 1])
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    assert common.evaluate(model, x, y, mean, std, 4, "running") == 0.5
    assert common.evaluate(model, x, y, mean, std, 4, "batch") == 1.0


def test_white_noise_is_plain_randn_from_its_own_generator():
    z = common.sample_noise(4, (3, 8, 8), torch.Generator().manual_seed(5))
    assert torch.equal(z, torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_spectrum_noise_has_unit_pixel_variance_and_the_asked_power_law(alpha):
    z = common.sample_noise(4000, (1, 32, 32), torch.Generator().manual_seed(0), alpha=alpha)
    var = z.var(0)
    assert abs(var.mean().item() - 1) < 0.02 and (var - 1).abs().max() < 0.15  # standardized per pixel
    power = torch.fft.fft2(z[:, 0]).abs().pow(2).mean(0)
    f = torch.sqrt(torch.fft.fftfreq(32).view(-1, 1) ** 2 + torch.fft.fftfreq(32).view(1, -1) ** 2)
    keep = (f > 0.05) & (f < 0.45)
    slope = np.polyfit(f[keep].log().numpy(), power[keep].log().numpy(), 1)[0]
    assert slope == pytest.approx(-alpha, abs=0.1)


@pytest.mark.parametrize("alpha", [8.0, 26.0, 40.0])
def test_steep_spectra_stay_finite_with_unit_pixel_variance(alpha):
    """The filter was once computed as f^(-alpha/2) in float32, which overflows near alpha 26: all-zero noise."""
    z = common.sample_noise(2000, (1, 16, 16), torch.Generator().manual_seed(0), alpha=alpha)
    assert torch.isfinite(z).all() and abs(z.var(0).mean().item() - 1) < 0.1


def test_colour_and_mean_give_the_asked_channel_covariance():
    color = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.4, 0.0], [0.8, 0.3, 0.5]])
    mean = torch.tensor([0.5, -1.0, 0.0])
    z = common.sample_noise(4000, (3, 8, 8), torch.Generator().manual_seed(0), alpha=2.0, color=color, mean=mean)
    flat = z.permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.allclose(flat.mean(1), mean, atol=0.05)
    assert torch.allclose(torch.cov(flat), color @ color.T, atol=0.06)


def test_portable_paths_are_relative_to_the_repository_or_a_bare_name():
    obj = {"a": str(common.REPO / "teachers" / "t.pt"), "b": ["/elsewhere/data/x.npz", "runs", 3],
           "c": {"d": str(common.REPO / ".." / "shared" / "t.th")}}
    assert common.portable(obj) == {"a": "teachers/t.pt", "b": ["x.npz", "runs", 3], "c": {"d": "t.th"}}


def test_label_stats():
    assert common.label_stats([5, 5, 5, 5]) == {"entropy": pytest.approx(1.0), "max_share": 0.25, "missing": 0}
    s = common.label_stats([10, 0, 0, 0])
    assert s["entropy"] == 0 and s["max_share"] == 1 and s["missing"] == 3
    assert common.label_stats([1, 3])["entropy"] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2))


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path, monkeypatch):
    state = {"w": torch.randn(3), "step": 7, "curve": [{"a": 0.5}], "gen": torch.Generator().manual_seed(1).get_state()}
    common.save_checkpoint(tmp_path / "c.pt", **state)
    back = common.load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["w"], state["w"]) and back["step"] == 7 and back["curve"] == [{"a": 0.5}]
    assert torch.equal(back["gen"], state["gen"]) and not list(tmp_path.glob("*.tmp"))

    def dies_mid_write(payload, f):  # a crash (disk full, a kill) after part of the new file is written
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise OSError("no space left on device")
    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(OSError):
        common.save_checkpoint(tmp_path / "c.pt", **{**state, "step": 8})
    monkeypatch.undo()
    assert common.load_checkpoint(tmp_path / "c.pt")["step"] == 7  # the last good checkpoint is still whole


def test_metrics_log_drops_rows_past_the_resumed_step(tmp_path):
    log = common.MetricsLog(tmp_path / "m.jsonl")
    for s in (10, 20, 30):
        log.log(s, loss=s)
    common.MetricsLog(tmp_path / "m.jsonl", resume_step=20)
    assert [r["step"] for r in common.MetricsLog.read(tmp_path / "m.jsonl")] == [10, 20]


def test_label_counts_is_the_histogram_bincount_gives_with_empty_classes_kept():
    labels = torch.tensor([3, 0, 3, 9, 3])
    assert common.label_counts(labels, 12).tolist() == torch.bincount(labels, minlength=12).tolist()
    assert common.label_counts(labels, 12).tolist() == [1, 0, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0]
    assert common.label_counts(torch.zeros(0, dtype=torch.long), 3).tolist() == [0, 0, 0]
