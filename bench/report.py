"""Generate the README's results tables and the figures from the committed results/*.json files.

    python bench/report.py           # rewrite the generated blocks of README.md and the figures in results/
    python bench/report.py --check   # exit 1 when README.md disagrees with results/ (the test suite runs this)

A generated block sits between '<!-- BEGIN name -->' and '<!-- END name -->' in README.md; nothing in it is typed
by hand.
"""
import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
PROTOCOLS = ("eval/acc_running", "eval/acc_batchstats")  # the student as deployed (eval mode), test-batch statistics
PANELS = ("student in eval mode (running statistics)", "test-batch statistics")  # the learning curves' panels


# ---- reading results and writing tables ----

def read(name):
    """results/<name> (JSON), or None when it does not exist."""
    return json.loads((RESULTS / name).read_text()) if (RESULTS / name).exists() else None


def load(folder):
    """{file stem: results} of every results/<folder>/*.json, in file-name order."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((RESULTS / folder).glob("*.json"))}


def one_setting(runs, name, setting):
    """One table, one setting: raise when the runs differ in setting(run), else return one of them."""
    if len({setting(r) for r in runs.values()}) != 1:
        raise ValueError(f"{name} mixes settings: { {k: setting(r) for k, r in runs.items()} }")
    return next(iter(runs.values()))


def probe_samples(args):
    """How many noise samples a run's teacher diagnostics used, also from results written before the flag's rename."""
    return next(args[k] for k in ("probe_samples", "diag_samples", "samples") if k in args)


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}"


def ent(x):
    return f"{x + 0.0:.3f}"  # + 0.0 turns the -0.0 of an empty-sum entropy into 0.0


def accs(r, keys=PROTOCOLS):
    """'running / test-batch': a student's two accuracies (%), or another such pair of keys."""
    return " / ".join(pct(r[k]) for k in keys)


def samples(n):
    """A noise budget as the tables write it: 128k, 1M, 10M."""
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n // 1000}k"


def curve_cells(r, points):
    """One cell per protocol: the run's accuracies (%) at these noise-sample counts ('n/a': not evaluated there)."""
    at = lambda n, key: next((x[key] for x in r["curve"] if x["samples_seen"] == n), None)
    return [" / ".join(pct(at(n, key)) for n in points) for key in PROTOCOLS]


def kd_loss(r):
    """The mean of a run's last 5 logged KD losses (its last 50 steps), 'n/a' when it logged none. A run that matched
    the stage outputs too: its KL term alone where it logged it, else its whole loss, marked 'total' (logits +
    weight x stage outputs: not comparable with the KL of the others)."""
    feat = r["args"].get("feature_weight")
    loss = (feat and r.get("train_logit_loss_curve")) or r.get("train_loss_curve")
    if not loss:
        return "n/a"
    total = feat and "train_logit_loss_curve" not in r
    return f"{np.mean([v for _, v in loss[-5:]]):.2f}" + (" (total)" if total else "")


def table(align, header, rows):
    """A markdown table as lines; align: one letter per column, l (text) or r (numbers, right-aligned). A cell that
    is None prints as '| |'; one that is '' keeps both its spaces, '|  |' (as the README's tables have it)."""
    row = lambda cells: "|" + "|".join(" " if c is None else f" {c} " for c in cells) + "|"
    return [row(header), "|" + "".join("---:|" if a == "r" else "---|" for a in align), *map(row, rows)]


def block(*parts):
    """A README block: paragraphs (str) and tables (lists of lines), one blank line apart."""
    return "\n\n".join(p if isinstance(p, str) else "\n".join(p) for p in parts)


# ---- figures ----

def figure(ncols, figsize, **kw):
    """A figure with one row of ncols axes (matplotlib, imported only to draw; no pyplot, no display)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    return fig, list(fig.subplots(1, ncols, squeeze=False, **kw)[0])


def save(fig, path, legend_of=None, ncol=1, bottom=0.0):
    """Lay the figure out and save it to path. legend_of: an axes of test accuracies, whose y axis is labelled so
    and whose legend goes under the figure, in ncol columns within the bottom margin."""
    if legend_of is not None:
        legend_of.set_ylabel("CIFAR-10 test accuracy (%)")
        fig.legend(*legend_of.get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)


def plot_accuracy(ax, curve, key, **style):
    """One learning curve: accuracy (%) under one protocol against noise samples seen (thousands)."""
    ax.plot([row["samples_seen"] / 1000 for row in curve], [100 * row[key] for row in curve], **style)


def label_axes(axes, titles, **title_style):
    for ax, title in zip(axes, titles):
        ax.set_title(title, **title_style)
        ax.set_xlabel("noise samples seen (thousands)")
        ax.grid(alpha=0.3)


def learning_curves(runs, figsize, loss_title=None, **kw):
    """Learning curves of runs [(curve, plot style, KD loss curve [(samples, loss)] or None)] under both protocols,
    one panel each; with loss_title, a third panel of the loss curves, and chance marked on the accuracy panels."""
    fig, axes = figure(2 + bool(loss_title), figsize, **kw)
    for curve, style, _ in runs:
        for ax, key in zip(axes, PROTOCOLS):
            plot_accuracy(ax, curve, key, marker="o", ms=3, **style)
    label_axes(axes, (*PANELS, loss_title))
    if loss_title:
        for _, style, loss in runs:
            if loss:
                axes[2].plot([n / 1000 for n, _ in loss], [v for _, v in loss], lw=0.8, **style)
        for ax in axes[:2]:
            ax.axhline(10, color="k", lw=0.6, ls=":")
            ax.set_ylim(0, None)
    return fig, axes


# ---- README blocks and figures, one function each ----

DEFAULT_BUDGET = 256_000  # noise samples of a default run of cs_rejection_bn.py: 8,000 steps of 32 (tested)
HEADLINE = [  # (results file, what it is[, its row in calibrate_bn.json]): the first table, the recipe of today
    ("default_run.json", "`python cs_rejection_bn.py`: the default (fitted noise, CS + rejection, stage outputs "
                         "matched, BN statistics calibrated)"),
    ("default_run_s1.json", "the same, `--seed 1`"),
    ("default_run_r34_32k.json", "`python cs_rejection_bn.py --teacher resnet34 --dataset cifar10 --steps 1000`: "
                                 "the prior work's pair with our defaults, at 1/8 of the default budget (what one "
                                 "sitting on a 2-core CPU without bf16 affords: \"Teachers\")"),
    ("default_run_r34_32k_s1.json", "the same, `--seed 1` (`--steps 1000`; most of its time is the calibration, "
                                    "whose inversion ran in float32 then: \"Teachers\")"),
    ("prior_run_r34_32k.json", "the prior work's recipe on that pair at the same budget (`--batch-size 256 --steps "
                               "125`, its other flags as in \"Reproducing the results\")"),
    ("prior_run_r34_32k_s1.json", "the same, `--seed 1` (`--steps 125`)"),
    ("default_run_aka20.json", "the default on the shared ResNet-20 (`--teacher-ckpt`), a teacher users bring"),
    ("default_run_aka20_s1.json", "the same, seed 1"),
    ("default_run_aka56.json", "the default on the shared ResNet-56 (`--teacher resnet56 --teacher-ckpt`)"),
    ("default_run_aka56_s1.json", "the same, seed 1"),
    ("prior_run_256k.json", "the prior work's recipe at the same budget: white noise, the logits alone, batch 256, "
                            "Adam 1e-3 constant, no calibration"),
    ("prior_run_256k_s1.json", "the same, seed 1"),
    # the long runs at the prior work's budget, once finished; ours deploys calibrated by bench/calibrate_bn.py
    ("long_run/default_10m.json", "the default at the prior work's budget (`python bench/long_run.py --arms "
                                  "default_10m`, in several sittings; its student calibrated afterwards by "
                                  "`bench/calibrate_bn.py`, not in the wall time)", "default_10m"),
    ("long_run/prior.json", "the prior work's recipe at its own budget (`python bench/long_run.py --arms prior`, in "
                            "two sittings)"),
]
HISTORY = [  # (results file, what it is, its row in calibrate_bn.json or None[, no wall time]): how the default got here
    ("default_run_feat10.json", "the default before: the stage outputs at weight 10 (`--feature-weight 10`)", None),
    ("default_run_feat10_s1.json", "the same, seed 1", None),
    ("default_run_aka20_feat10.json", "the same on the shared ResNet-20", None),
    ("default_run_aka20_feat10_s1.json", "the same, seed 1", None),
    ("default_run_aka56_feat10.json", "the same on the shared ResNet-56", None),
    ("default_run_aka56_feat10_s1.json", "the same, seed 1", None),
    ("default_run_feat1.json", "the default before that: the stage outputs at weight 1 (`--feature-weight 1`)", None),
    ("default_run_feat1_s1.json", "the same, seed 1", None),
    ("default_run_aka20_feat1.json", "the same on the shared ResNet-20", None),
    ("default_run_aka20_feat1_s1.json", "the same, seed 1", None),
    ("default_run_128k.json", "weight 1 with half the samples (`--steps 4000`, the default before 256k)",
     "default_run_128k"),
    ("default_run_128k_s1.json", "the same, seed 1", "default_run_128k_s1"),
    ("noise_fit/ours20__default_fit_b32_feat__s0.json", "the same in fp32 (`bench/noise_fit.py`)",
     "ours20__default_fit_b32_feat__s0"),
    ("noise_fit/ours20__default_fit_b32_feat__s1.json", "the same, seed 1", "ours20__default_fit_b32_feat__s1"),
    ("noise_fit/ours20__default_fit_b32__s0.json", "the former default: the logits alone (`--feature-weight 0`)",
     "ours20__default_fit_b32__s0"),
    ("noise_fit/ours20__default_fit_b32__s1.json", "the same, seed 1", "ours20__default_fit_b32__s1"),
    ("noise_fit/aka20__default_fit_b32_feat__s0.json", "weight 1 at 128k, fp32, on the shared ResNet-20",
     "aka20__default_fit_b32_feat__s0"),
    ("noise_fit/aka20__default_fit_b32_feat__s1.json", "the same, seed 1", "aka20__default_fit_b32_feat__s1"),
    ("noise_fit/aka20__default_fit_b32__s0.json", "the former default on the shared teacher",
     "aka20__default_fit_b32__s0"),
    ("noise_fit/aka20__default_fit_b32__s1.json", "the same, seed 1", "aka20__default_fit_b32__s1"),
    ("default_run_white_256k.json", "an earlier default (batch 256, the logits alone) with the paper's white noise "
                                    "(`--no-fit-noise`), twice the budget", None),
    ("noise_fit/aka20__prior_fit__s0.json", "prior work's recipe with fitted noise, the shared teacher",
     "aka20__prior_fit__s0"),
    ("noise_fit/aka20__prior_fit__s1.json", "the same, seed 1", "aka20__prior_fit__s1"),
    ("bn_variants/prior_recipe.json", "prior work's recipe, white noise (the paper's), the shared teacher", None),
    ("noise_fit/aka20__prior_white__s1.json", "the same, seed 1, 128k samples", "aka20__prior_white__s1"),
    ("long_run/feat_512k.json", "the default before (weight 1) for 512k samples (`bench/long_run.py`)",
     "feat_512k"),
    ("long_run/feat_512k_s1.json", "the same, seed 1", "feat_512k_s1"),
    ("long_run/ours_512k.json", "the former default for 512k samples (`bench/long_run.py`)", "ours_512k"),
    ("long_run/ours_512k_s1.json", "the same, seed 1", "ours_512k_s1"),
    ("long_run/ours_1m.json", "the former default for 1M samples (`bench/long_run.py`)", "ours_1m", "paused"),
    ("long_run/ours_1m_s1.json", "the same, seed 1", "ours_1m_s1"),
]
WALL_TIME_NOTE = ("Wall time as measured on a shared 2-core machine, from the first distillation step to the results "
                  "(the calibration included; not the setup before it, the teacher loaded and measured and the noise "
                  "fitted, about a minute on a ResNet-20): tests ran beside some of these runs, so it is an upper "
                  "bound of that span")


def device_name(device):
    """A recorded device string as this report writes it (records made before common.device_name wrote '1 thread'
    say '1 threads')."""
    return device.replace(", 1 threads)", ", 1 thread)")


def device_of(r):
    """Where a run ran, as its results record it."""
    return device_name(r["provenance"]["device"])


def hardware(r):
    """The device a run ran on, without the host's name ('1 and 2 threads' where its sittings ran on the same CPU with
    different thread counts); ', bf16' when it ran with bf16."""
    def inside(device):
        device = device_name(device)
        device = device.split("(", 1)[1].rsplit(")", 1)[0] if "(" in device else device
        return "CPU (name not recorded)," + device[len("cpu,"):] if device.startswith("cpu,") else device
    sittings = list(dict.fromkeys(inside(x["device"]) for x in r["provenance"].get("stretches") or [r["provenance"]]))
    names = {d.rsplit(", ", 1)[0] for d in sittings}
    if len(sittings) > 1 and len(names) == 1 and all(d.endswith(("thread", "threads")) for d in sittings):
        counts = sorted({d.rsplit(", ", 1)[1].split()[0] for d in sittings}, key=int)
        device = f"{names.pop()}, {' and '.join(counts)} threads"
    else:
        device = " / ".join(sittings)
    return device + (", bf16" if r["args"].get("bf16") else "")


def wall_time(r):
    return f"{r['provenance']['wall_time_s'] / 60:.0f} min" if r["provenance"].get("wall_time_s") else "n/a"


def deployed_table(first, labelled):
    """The headline's table (and the GPU pair's): one row per (label, run), the student as deployed first; a student
    that was not calibrated deploys as trained."""
    rows = [[label, f"{r['args']['teacher']} ({pct(r['teacher/acc'])}%) -> {r['args']['student']}",
             samples(r["samples_seen"]), r["args"]["batch_size"],
             f"**{pct(r.get('eval/acc_calibrated', r['eval/acc_running']))}%**", f"{pct(r['eval/acc_running'])}%",
             f"{pct(r['eval/acc_batchstats'])}%", wall_time(r), hardware(r)] for label, r in labelled]
    return table("llrrrrrrl", [first, "teacher -> student", "noise samples", "batch",
                               "student as deployed (plain eval mode)", "eval mode as trained", "test-batch statistics",
                               "wall time", "hardware"], rows)


def setup_clause(r):
    """What a run's wall time leaves out: the setup before its first step, when the run recorded it."""
    setup = r["provenance"].get("setup_s")
    return ("counted from the first step: " + (f"the setup before it took {setup / 60:.0f} minutes more" if setup else
                                              "the setup before it, the noise fit above all, is not in that time"))


def headline_block():
    calibrated = {x["run"]: x for x in (read("calibrate_bn.json") or {"rows": []})["rows"]
                  if x.get("study") == "long_run"}
    labelled = []
    for name, label, *cal in HEADLINE:
        r = read(name)
        if r is None or r.get("finished") is False:  # a seed still queued, a long run still going: no row yet
            continue
        if cal:  # a long run trains as a study's runs do, uncalibrated: it deploys as bench/calibrate_bn.py made it
            row = calibrated.get(cal[0])
            if row is None or row["samples_seen"] != r["samples_seen"]:  # its final student not calibrated yet
                continue
            r = {**r, "eval/acc_calibrated": row["acc_inverted"]}
        labelled.append((label, r))
    return block(deployed_table("run", labelled),
                 "As deployed: the student in plain eval mode with its BN statistics calibrated (`--calibrate-bn`, "
                 "ours, \"How it works\": re-estimated after training on inputs synthesized from the teacher, no "
                 "image read); the prior recipe does not calibrate, so its student deploys as trained. Test-batch "
                 "statistics: each BatchNorm normalizes by the test batch of 256 (the prior work's protocol). "
                 f"{WALL_TIME_NOTE}. How the default got here, run by run: \"Earlier defaults\" below.")


def history_block():
    calibrated = {x["run"]: x.get("acc_inverted") for x in (read("calibrate_bn.json") or {"rows": []})["rows"]}
    rows = []
    paused = False  # a row whose wall time is not shown because the run was paused
    for name, label, cal, *no_wall in HISTORY:
        r = read(name)
        if r is None or r.get("finished") is False:  # a long run still going: its curve so far is in its section
            continue
        a = r["args"]
        paused = paused or no_wall == ["paused"]
        rows.append([label, f"{a['teacher']} ({pct(r['teacher/acc'])}%) -> {a['student']}",
                     samples(r["samples_seen"]), a["batch_size"], *(f"{pct(r[k])}%" for k in PROTOCOLS),
                     f"{pct(r['eval/acc_calibrated'])}%" if "eval/acc_calibrated" in r else  # calibrated in the run
                     f"{pct(calibrated[cal])}%" if calibrated.get(cal) is not None else "",
                     f"n/a ({no_wall[0]})" if no_wall else wall_time(r), hardware(r)])
    return block(table("llrrrrrrl", ["run", "teacher -> student", "noise samples", "batch", "student, eval mode",
                                     "student, test-batch statistics", "eval mode after `--calibrate-bn`", "wall time",
                                     "hardware"], rows),
                 f"{WALL_TIME_NOTE}; the AMD EPYC has no bf16 and runs fp32, several times slower per step than the "
                 "Xeon with bf16. `--calibrate-bn` is on by default for a BN student since the 256k default, so the "
                 "rows above the 128k ones ran it; earlier rows were calibrated afterwards by "
                 "`bench/calibrate_bn.py`, `results/calibrate_bn.json`; blank: not measured."
                 + (" Paused: the run was stopped for hours by other jobs on this machine, so its wall time says "
                    "nothing of its speed." if paused else ""))


def default_run_block():
    r = read("default_run.json")
    if r is None:
        return ("_Not measured yet: `python cs_rejection_bn.py`, then copy its results.json to "
                "results/default_run.json._")
    return (f"Measured (`python cs_rejection_bn.py --data-dir {r['args']['data_dir']}`, the data read from elsewhere, "
            f"everything else the defaults): with the shipped teacher ({pct(r['teacher/acc'])}%), the student reached "
            f"{pct(r['eval/acc_calibrated'])}% in plain eval mode after its BN statistics were calibrated "
            f"({pct(r['eval/acc_running'])}% with its running statistics as trained on noise) and "
            f"{pct(r['eval/acc_batchstats'])}% with test-batch statistics (batch {r['eval/batch_size']}) after "
            f"{r['samples_seen']:,} noise samples, in {r['provenance']['wall_time_s'] / 60:.0f} minutes on "
            f"{device_of(r)}"
            f"{', bf16' if r['args'].get('bf16') else ''} (`results/default_run.json`), {setup_clause(r)}.")


def pair_run_block():
    """The Quick start's line for the headline command on the prior work's pair: its time on a CPU and on a GPU."""
    r, gpu = read("default_run_r34_32k.json"), read("gpu_pair/ours.json")
    cpu = ("its time on a CPU is pending (`results/default_run_r34_32k.json` is not committed yet)" if r is None else
           f"on a 2-core CPU it is slow. With `--steps {r['args']['steps']}` ({samples(r['samples_seen'])} noise "
           f"samples, 1/{DEFAULT_BUDGET / r['samples_seen']:.3g} of the default {samples(DEFAULT_BUDGET)}) it took "
           f"{r['provenance']['wall_time_s'] / 60:.0f} minutes on {hardware(r)}"
           f"{'' if r['args'].get('bf16') else ', fp32'} ({setup_clause(r)}), and its student reached "
           f"{pct(r['eval/acc_calibrated'])}% in plain eval mode (`results/default_run_r34_32k.json`). Its training "
           f"steps ran at {r['samples_per_s']:.0f} noise samples per second: the default {samples(DEFAULT_BUDGET)} "
           f"samples would train for about {DEFAULT_BUDGET / r['samples_per_s'] / 3600:.1f} hours there, the "
           "evaluations and the calibration on top")
    on_gpu = ("On one GPU the time is pending: no GPU run of `bench/gpu_pair.py` exists yet" if gpu is None else
              f"On one GPU, `bench/gpu_pair.py` ran our recipe at {samples(gpu['samples_seen'])} samples (batches of "
              f"{gpu['args']['batch_size']}) in {gpu['provenance']['wall_time_s'] / 60:.0f} minutes on "
              f"{hardware(gpu)} (`results/gpu_pair/ours.json`)")
    return (f"`python cs_rejection_bn.py --teacher resnet34 --dataset cifar10` distils the ResNet-34 we ship "
            f"(`teachers/resnet34_cifar10_bn.pt`) into the prior work's ResNet-18 student with the same defaults: "
            f"{cpu}. {on_gpu}.")


def gpu_pair_block():
    """bench/gpu_pair.py's rows (results/gpu_pair/), or the line that says they are pending."""
    arms = [(arm, read(f"gpu_pair/{arm}.json")) for arm in ("prior", "ours")]
    speed = read("gpu_pair/gpu_speed.json")
    if speed is None and all(r is None for _, r in arms):
        return ("_Pending: no GPU run of `bench/gpu_pair.py` exists yet; its rows appear here once results/gpu_pair/ "
                "holds the JSONs it writes._")
    labels = {"prior": "the prior work's recipe", "ours": "our defaults, at batches of 256"}
    labelled = [(labels[arm], r) for arm, r in arms if r is not None]
    parts = [deployed_table("arm", labelled)] if labelled else []
    if speed is not None:
        parts.append(f"`bench/gpu_speed.py` on the pair, batch {speed['batch_size']}: "
                     f"{speed['samples_per_s_fp32_eager']:.0f} samples/s in fp32 eager mode, "
                     f"{speed['samples_per_s_fast']:.0f} with bf16 and channels_last"
                     f"{' and torch.compile' if speed['compile'] else ''} ({speed['speedup']:.1f}x), on "
                     f"{device_of(speed)} (`results/gpu_pair/gpu_speed.json`).")
    missing = [f"`{a}`" for a, r in arms if r is None]
    if missing:
        parts.append(f"Pending: the arm{'s' if len(missing) > 1 else ''} {' and '.join(missing)}.")
    return block(*parts)


BN_VARIANTS = [  # (file stem, label): the order of the table's rows
    ("prior_recipe", "prior work's recipe: CS, no balancing, Adam 1e-3 constant"),
    ("running", "baseline: teacher in eval mode (running statistics)"),
    ("cs", "CS"),
    ("cs_reject", "CS + rejection (NormShift-KD, white noise)"),
    ("cs_reweight", "CS + reweighting"),
    ("cs_reject_alpha2", "CS + rejection, 1/f^2 noise (`--noise-alpha 2`)"),
    ("cs_b64", "CS, batch 64 (4x the updates for the same samples)"),
]


def bn_variants_block():
    runs = load("bn_variants")
    if not runs:
        return "_No results yet: run `python bench/bn_variants.py`._"
    r0 = one_setting(runs, "results/bn_variants", lambda r: (r["samples_seen"], r["args"]["seed"], r["teacher/sha256"],
                                                             r["eval/batch_size"], r["eval/num_images"]))
    rows = []
    for stem, label in BN_VARIANTS:
        r = runs.get(stem)
        rows.append([label, "not run yet", *[None] * 7] if r is None else [
            label, *(pct(r[k]) for k in PROTOCOLS), ent(r["noise/label_entropy"]),
            ent(r["noise/accepted_label_entropy"]),
            f"{pct(r['noise/label_max_share'])}% / {pct(r['noise/accepted_max_share'])}%",
            f"{r['noise/acceptance_rate']:.2f}", f"{r['samples_per_s']:.0f}", f"{pct(r['sampler_time_frac'])}%"])
    return block(
        f"Shared ResNet-20 teacher (test accuracy {pct(r0['teacher/acc'])}% as measured by the run) -> ResNet-20 "
        f"student, CIFAR-10, {r0['samples_seen']:,} noise samples each (batch 256 unless said), "
        f"seed {r0['args']['seed']}. Accuracy on the {r0['eval/num_images']:,} test images with the student's "
        f"running statistics (eval mode) and with each test batch's statistics (batch {r0['eval/batch_size']}). "
        "Noise-label entropy: the teacher's argmax histogram on raw noise, H / log K; accepted: on the batches the "
        "student trained on. Measured on " + device_of(r0) + ".",
        table("lrrrrrrrr", ["variant", "acc, running stats", "acc, test-batch stats", "noise-label entropy",
                            "accepted entropy", "largest class (raw / accepted)", "acceptance", "student samples/s",
                            "sampler time"], rows),
        "![learning curves](results/bn_variants.png)")


def bn_variants_figure(path):
    runs = load("bn_variants")
    if runs:
        fig, axes = learning_curves([(runs[stem]["curve"], dict(label=label), None) for stem, label in BN_VARIANTS
                                     if stem in runs], (11, 4.8), sharey=True)
        save(fig, path, axes[0], ncol=3, bottom=0.14)


def seeds_block():
    seeds = sorted({p.parent.name for p in RESULTS.glob("bn_variants_seed*/*.json")})  # folder names
    if not seeds:
        return "_No second seed yet._"
    base, other = load("bn_variants"), [load(s) for s in seeds]
    fmt = lambda r: accs(r) if r else "not run"
    rows = [[label, fmt(base.get(stem)), *(fmt(o.get(stem)) for o in other)]
            for stem, label in BN_VARIANTS if any(o.get(stem) for o in other)]
    header = ["variant", "seed 0", *(f"seed {s.removeprefix('bn_variants_seed')}" for s in seeds)]
    return block("Final accuracy, running stats / test-batch stats, same setting as the table above, other seeds "
                 "(`python bench/bn_variants.py --data-dir ../shared/data --seed S --only ... "
                 "--out results/bn_variants_seedS`):", table("lr" + "r" * len(seeds), header, rows))


NOISE_FIT_TEACHERS = {"aka20": "shared ResNet-20 (91.7%)", "ours20": "shipped ResNet-20 (89.9%)"}
NOISE_FIT_ROWS = [  # (teacher, arm, colour in the figure, label): the order of the table's rows
    ("aka20", "prior_white", "tab:gray", "prior work's recipe, white noise (the paper's)"),
    ("aka20", "prior_fit", "tab:blue", "prior work's recipe, fitted noise (`--fit-noise`)"),
    ("aka20", "prior_fit_cs7", "tab:pink", "the same with CS in the last 7 BN layers (`--cs-last-layers 7`)"),
    ("aka20", "prior_fit_feat", "gold", "the same with the stage outputs matched (`--feature-weight 1`)"),
    ("aka20", "default_fit_b32", "tab:olive",
     "our recipe, fitted noise, batch 32, the logits alone (the former default)"),
    ("aka20", "default_fit_b32_feat", "goldenrod", "the same with the stage outputs matched (weight 1)"),
    ("aka20", "default", "darkgoldenrod", "the same in bf16 (the default before weight 10)"),
    ("aka20", "default_tau2", "lightsteelblue", "the same (bf16) with temperature 2 (`--tau 2`)"),
    ("aka20", "default_tau4", "steelblue", "the same (bf16) with temperature 4 (`--tau 4`)"),
    ("aka20", "default_feat3", "orangered", "the same (bf16) with `--feature-weight 3`"),
    ("aka20", "default_feat10", "darkred", "the same (bf16) with `--feature-weight 10`"),
    ("aka20", "default_feat30", "magenta", "the same (bf16) with `--feature-weight 30`"),
    ("aka20", "default_feat30_cs7", "mediumorchid",
     "weight 30 (the default now) with CS in the last 7 BN layers (`--cs-last-layers 7`)"),
    ("aka20", "default_feat10_none", "tab:cyan", "weight 10 (the default then) without rejection (`--balance none`)"),
    ("aka20", "default_feat10_reweight", "teal", "weight 10 with loss reweighting (`--balance reweight`)"),
    ("aka20", "default_feat10_running", "slategray",
     "weight 10, teacher in eval mode (`--teacher-bn running --balance none`)"),
    ("ours20", "default_white", "tab:orange", "our recipe (CS + rejection, Adam 2e-3 cosine), white"),
    ("ours20", "default_fit", "tab:red", "our recipe, fitted noise, batch 256 (an earlier default)"),
    ("ours20", "default_fit_b64", "tab:purple", "our recipe, fitted noise, batch 64 (`--batch-size 64`)"),
    ("ours20", "default_fit_b32", "tab:green",
     "our recipe, fitted noise, batch 32, the logits alone (the former default)"),
    ("ours20", "default_fit_b32_mse", "tab:olive", "the former default with `--loss mse`"),
    ("ours20", "default_fit_b16", "tab:cyan", "the former default with batches of 16 (`--batch-size 16`)"),
    ("ours20", "default_fit_b32_cs7", "tab:brown",
     "the former default with CS in the last 7 BN layers (`--cs-last-layers 7`)"),
    ("ours20", "default_fit_b32_feat", "black",
     "batch 32 with the stage outputs matched (`--feature-weight 1`)"),
    ("ours20", "default_fit_b32_feat3", "dimgray", "the same with `--feature-weight 3`"),
    ("ours20", "default_feat3", "salmon", "our recipe in bf16 with `--feature-weight 3`"),
    ("ours20", "default_feat10", "crimson", "our recipe in bf16 with `--feature-weight 10`"),
    ("ours20", "default_feat30", "deeppink", "our recipe in bf16 with `--feature-weight 30`"),
]


def noise_fit_runs():
    """All runs by name, and the table's rows [(teacher label, colour, label, results)], one per seed in
    NOISE_FIT_ROWS' order: results/noise_fit/, plus the prior recipe's white-noise run of results/bn_variants (seed
    0, same teacher and flags, 256k samples: its first 128k are the same run) where this bench has not run seed 0."""
    runs, prior = load("noise_fit"), read("bn_variants/prior_recipe.json")
    if runs and "aka20__prior_white__s0" not in runs and prior:
        runs["aka20__prior_white__s0"] = {**prior, "source": "results/bn_variants"}
    return runs, [(NOISE_FIT_TEACHERS[teacher], color, label, runs[stem]) for teacher, arm, color, label in
                  NOISE_FIT_ROWS for stem in sorted(k for k in runs if k.startswith(f"{teacher}__{arm}__s"))]


def noise_fit_block():
    runs, table_rows = noise_fit_runs()
    if not runs:
        return "_No results yet: run `python bench/noise_fit.py`._"
    points = sorted({row["samples_seen"] for r in runs.values() if "source" not in r for row in r["curve"]})
    rows = []
    for teacher, _, label, r in table_rows:
        fit = ""
        if r.get("noise/fitted"):
            L = np.array(r["noise/fitted"]["color"])
            cov = L @ L.T
            corr = (cov / np.sqrt(np.outer(cov.diagonal(), cov.diagonal())))[np.triu_indices(len(L), 1)]
            fit = (f"1/f^{r['noise/fitted']['alpha']:.1f}, colour correlation {corr.min():.2f}-{corr.max():.2f}; "
                   f"{r['noise/bn_loss_white']:.1f} -> {r['noise/bn_loss_fitted']:.1f}")
        if "source" in r:  # the run of the other table: another machine, bf16, and 256k samples
            fit = f"the run of `{r['source']}` (another CPU, bf16; its loss at {r['samples_seen'] // 1000}k)"
        loss = f"{r['train/final_loss']:.2f}" + (" (KD + features)" if r["args"].get("feature_weight") else "")
        rows.append([teacher, label, r["args"]["seed"], *curve_cells(r, points), loss, fit])
    return block(
        f"ResNet-20 students, CIFAR-10 test accuracy (%) after {' / '.join(f'{n // 1000}k' for n in points)} "
        "noise samples, with the student's running statistics (eval mode: the deployed model) and with test-batch "
        "statistics (batch 256); final KD loss (nats, the last logged batch); for the fitted noise its spectrum "
        "exponent, the correlation between its colour channels, and the BN-statistics loss on white noise -> on "
        "the fitted noise. One row per seed. "
        + measured_on([(f"{teacher.split(' (')[0]}: {label}", r) for teacher, _, label, r in table_rows]),
        table("llrllrl", ["teacher", "recipe and noise", "seed", "acc, running stats", "acc, test-batch stats",
                          "final KD loss", "fitted noise"], rows),
        "![fitted noise](results/noise_fit.png)")


def measured_on(labelled_runs, what="rows"):
    """'Measured on <the device of most rows>', then the rows (or, for a table of one run per cell, `what`) run
    elsewhere, by label."""
    by_device = {}
    for label, r in labelled_runs:
        if "source" not in r:  # the borrowed run says where it comes from in its own cell
            by_device.setdefault(device_of(r), []).append(label)
    main, *others = sorted(by_device, key=lambda d: -len(by_device[d]))
    quoted = lambda labels: ", ".join(f'"{label}"' for label in dict.fromkeys(labels))
    elsewhere = [f"the {what} {quoted(by_device[d])} on {d}" for d in others]
    return f"Measured on {main}" + (f"; {', '.join(elsewhere)}" if elsewhere else "") + "."


def noise_fit_figure(path):
    runs, table_rows = noise_fit_runs()
    if not runs:
        return
    last = max(row["samples_seen"] for r in runs.values() if "source" not in r for row in r["curve"])
    curves = []
    for teacher, color, label, r in table_rows:
        seed, a = r["args"]["seed"], r["args"]
        kl = a.get("loss", "kl") == "kl"  # an MSE loss is not the KL; with the stage outputs, the KL term alone
        loss = r.get("train_logit_loss_curve") if a.get("feature_weight") else r.get("train_loss_curve")
        curves.append(([row for row in r["curve"] if row["samples_seen"] <= last],
                       dict(color=color, ls="-" if seed == 0 else "--", label=f"{teacher}: {label}, seed {seed}"),
                       loss if kl else None))
    fig, axes = learning_curves(curves, (14, 4.4), "KD loss (KL, nats)")
    save(fig, path, axes[0], ncol=2, bottom=0.2)


def calibrate_bn_block():
    r = read("calibrate_bn.json")
    if r is None:
        return "_Not measured yet: run `python bench/calibrate_bn.py`._"
    return block(
        f"`{r['command']}`: each student of the table above whose run folder was still here"
        + (" and of each finished long run" if any(x.get("study") == "long_run" for x in r["rows"]) else "")
        + " from its final checkpoint, CIFAR-10 test accuracy (%) "
        f"in eval mode with its running statistics as trained, after re-estimating them on {r['batches']} batches "
        f"of {r['batch_size']} samples of the noise fitted to its teacher (no image), after re-estimating them on "
        f"{r['inverted']['samples']} inputs inverted from the teacher's BN statistics (`--calibrate-bn`: "
        f"{r['inverted']['steps']} Adam steps per batch of 256, synthesized, no image read), and with test-batch "
        "statistics, every accuracy evaluated here in fp32 (a run that evaluated with bf16 autocast can differ from "
        "its own numbers by a tenth of a point). " + calibrate_bn_measured_on(r["rows"]),
        table("llrrrrr", ["run", "trained on", "seed", "eval mode, as trained", "eval mode, calibrated on fitted noise",
                          "eval mode, calibrated on inverted inputs", "test-batch statistics"],
              [[f"`{x['run']}`" + (" (long run)" if x.get("study") == "long_run" else ""), x["trained_on"],
                x["seed"], pct(x["acc_running"]), pct(x["acc_calibrated"]), pct(x["acc_inverted"]),
                pct(x["acc_batchstats"])]
               for x in sorted(r["rows"], key=lambda x: (x.get("study") == "long_run", x["run"]))]))


def calibrate_bn_measured_on(rows):
    """Where calibrate_bn.json's rows were computed: each row records its own process since `--only` merges rows of
    several processes into one file; rows from before that record nothing."""
    labelled = [(x["run"], x) for x in rows if "provenance" in x]
    if not labelled:
        return "Where they were computed is not recorded."
    n, older = len(labelled), len(rows) - len(labelled)
    if not older:
        return measured_on(labelled)
    counted = lambda k: f"{k} row" + ("s" if k != 1 else "")
    return (measured_on(labelled)[:-1] + f" (for the {counted(n)} that record{'s' if n == 1 else ''} it; not "
            f"recorded for the {counted(older)} from before rows recorded it).")


FACTORS = [  # (arm, colour in the figure, what changes): the rows of the factor study, in bench/factors.py's order
    ("centre", "k", "nothing: the prior work's recipe on the fitted noise"),
    ("white", "tab:gray", "noise: white N(0, I), the paper's"),
    ("alpha2", "tab:brown", "noise: 1/f^2 set by hand, no colour or mean"),
    ("running", "tab:purple", "teacher BatchNorm: running statistics (eval mode), not CS"),
    ("lr3e-3", "tab:red", "learning rate 3e-3"),
    ("lr3e-4", "tab:orange", "learning rate 3e-4"),
    ("tau4", "tab:green", "temperature 4"),
    ("batch64", "tab:blue", "batch 64: 4x the updates for the same samples"),
    ("mse", "lime", "loss: MSE between centred logits, not KL"),
    ("teacher_e1", "gold", "teacher: ours (train_teacher.py's recipe), 1 epoch"),
    ("teacher_e2", "tab:olive", "teacher: ours, 2 epochs"),
    ("teacher_e5", "tab:cyan", "teacher: ours, 5 epochs"),
    ("teacher_e20", "tab:pink", "teacher: ours, 20 epochs (the shipped teacher)"),
    ("teacher_e5_ls0", "teal", "teacher: ours, 5 epochs without label smoothing"),
    ("teacher_e5_wd0", "navy", "teacher: ours, 5 epochs without weight decay"),
    ("teacher_e5_adamw", "magenta", "teacher: ours, 5 epochs of AdamW (lr 1e-3, weight decay 0.05) instead of SGD"),
    ("student_r18", "maroon", "student: the CIFAR ResNet-18 (11.2M parameters, 41x ResNet-20's)"),
]


def factors_runs():
    """[(arm, colour, label, seed, results)] in FACTORS' order, one per finished seed."""
    runs = load("factors")
    return [(arm, color, label, r["args"]["seed"], r) for arm, color, label in FACTORS
            for stem, r in sorted(runs.items()) if stem.startswith(f"{arm}__s")]


def factors_block():
    runs = factors_runs()
    if not runs:
        return "_No results yet: run `python bench/factors.py`._"
    points = sorted({x["samples_seen"] for *_, r in runs for x in r["curve"]})
    rows = []
    for arm, _, label, seed, r in runs:
        level = r.get("bench/kd_loss_constant_student")
        rows.append([f"`{arm}`", label, pct(r["teacher/acc"]), seed, *curve_cells(r, points), kd_loss(r),
                     "n/a" if level is None else f"{level:.2f}"])
    return block(
        "ResNet-20 students unless the row says; one change per row from the centre (the shared ResNet-20 teacher, "
        "the prior work's recipe on the noise fitted to the teacher's BN statistics). CIFAR-10 test accuracy (%) "
        "after "
        f"{' / '.join(f'{n / 1000:g}k' for n in points)} noise samples, with the student's running statistics and "
        "with test-batch statistics (batch 256); KD loss: the mean of the last 50 steps' logged losses (x tau^2); "
        "input-free level: the KD loss of the best student that ignores its input (it predicts the teacher's mean "
        "probabilities on this noise; for the MSE arm, its mean logits): a student at that level has learned "
        "nothing about the teacher. " + measured_on([(f"`{arm}` seed {seed}", r) for arm, _, _, seed, r in runs]),
        table("llrrllrr", ["arm", "what changes", "teacher acc", "seed", "acc, running stats",
                           "acc, test-batch stats", "KD loss", "input-free level"], rows),
        "![factors](results/factors.png)")


def factors_figure(path):
    runs = factors_runs()
    if not runs:
        return
    curves = []  # the loss as a ratio to the input-free level: the arms' teachers, modes and temperatures differ
    for arm, color, label, seed, r in runs:
        loss, level = r.get("train_loss_curve"), r.get("bench/kd_loss_constant_student")
        style = dict(color=color, ls="-" if seed == 0 else "--", label=f"{arm}: {label}, seed {seed}")
        curves.append((r["curve"], style, [(n, v / level) for n, v in loss] if loss and level else None))
    legend = 0.3 + 0.17 * math.ceil(len(curves) / 2)  # inches under the panels: two columns of legend lines
    fig, axes = learning_curves(curves, (14, 4.2 + legend), "KD loss / input-free level (1: nothing learned)")
    axes[2].axhline(1, color="k", lw=0.6, ls=":")
    save(fig, path, axes[0], ncol=2, bottom=legend / (4.2 + legend))


TEACHER_ON_NOISE = [  # (key, column): inputs and BatchNorm statistics of bench/teacher_on_noise.py
    ("images_running", "test images, eval mode"), ("fitted_cs", "fitted noise, CS"),
    ("fitted_running", "fitted noise, eval mode"), ("fitted_bm_rv", "fitted noise, batch mean + running variance"),
    ("fitted_rm_bv", "fitted noise, running mean + batch variance"), ("white_cs", "white noise, CS"),
    ("white_running", "white noise, eval mode")]


def teacher_on_noise_block():
    r = read("teacher_on_noise.json")
    if r is None:
        return "_Not measured yet: run `python bench/teacher_on_noise.py`._"
    cell = lambda m: f"{m['label_entropy']:.2f} / {m['input_free_level']:.2f} / {m['roughness']:.2f}"
    return block(
        f"`{r['command']}`: each teacher's answers on {r['samples']:,} inputs (batches of {r['batch_size']}) "
        "under each BatchNorm statistics; per cell: label entropy (of its argmax labels, / log 10; 1 = balanced) "
        "/ input-free level (nats: KL from its answers to its mean answer; 0 = it ignores its input) / roughness "
        f"(nats: mean KL between its answers on z and on z + {r['sigma']:g} eps, eps white, in its normalized "
        "input space). Roughness above the input-free level: a jitter that small changes the answer more than "
        f"drawing a new sample does. Measured on {device_of(r)}.",
        table("lr" + "l" * len(TEACHER_ON_NOISE), ["teacher", "test acc", *[c for _, c in TEACHER_ON_NOISE]],
              [[x["teacher"], pct(x["test_acc"]), *[cell(x[k]) for k, _ in TEACHER_ON_NOISE]] for x in r["rows"]]),
        *teacher_on_noise_cs_last(r, cell))


def teacher_on_noise_cs_last(r, cell):
    """The same measures on the fitted noise with CS in the teacher's last K BatchNorm layers only (`--cs-last-layers
    K`), where the results have them: [paragraph, table], or []."""
    ks = sorted({int(k[len("fitted_cs_last"):]) for x in r["rows"] for k in x if k.startswith("fitted_cs_last")})
    if not ks:
        return []
    return ["The same on the fitted noise with CS in the teacher's last K BatchNorm layers only, the earlier ones on "
            "their running statistics (`cs_rejection_bn.py --cs-last-layers K`; all = CS everywhere, the column "
            "\"fitted noise, CS\" above):",
            table("lr" + "l" * (len(ks) + 1), ["teacher", "BN layers", *[f"K = {k}" for k in ks], "all"],
                  [[x["teacher"], x["bn_layers"], *[cell(x[f"fitted_cs_last{k}"]) for k in ks], cell(x["fitted_cs"])]
                   for x in r["rows"]])]


LONG_RUN = [  # (arm, colour in the figure, recipe): the rows of the long-run table, in bench/long_run.py's order
    ("ours_1m", "tab:green", "our former default recipe (fitted noise, CS + rejection, batch 32, Adam 2e-3 cosine "
                             "over the budget; the logits alone)"),
    ("ours_512k", "tab:blue", "our former default recipe"),
    ("ours_512k_s1", "tab:cyan", "the same, seed 1"),
    ("ours_1m_s1", "tab:olive", "the same as `ours_1m`, seed 1"),
    ("feat_512k", "black", "our former default recipe with the stage outputs matched (`--feature-weight 1`, the "
                           "default before weight 10)"),
    ("feat_512k_s1", "dimgray", "the same, seed 1"),
    ("feat10_10m", "tab:orange", "our recipe with the stage outputs at weight 10 (the default before 30)"),
    ("default_10m", "tab:brown", "today's default recipe (the stage outputs at weight 30)"),
    ("ours", "tab:red", "our former default recipe"),
    ("aka20_1m", "darkgreen", "today's default recipe on the shared ResNet-20 (akamaster), a teacher users bring"),
    ("aka20_1m_s1", "limegreen", "the same, seed 1"),
    ("prior", "tab:gray", "the prior work's recipe (white noise, CS, batch 256, Adam 1e-3 constant)"),
]
LONG_RUN_POINTS = [128_000 * 2 ** k for k in range(7)]  # 128k ... 8.2M; then each arm's end of budget


def long_runs():
    """{arm: its results, or None where it has not started}, in LONG_RUN's order."""
    return {arm: read(f"long_run/{arm}.json") for arm, _, _ in LONG_RUN}


def brought_teacher(r):
    """The checkpoint of the teacher a run brought (--teacher-ckpt), or None for the shipped teacher."""
    return r["args"].get("teacher_ckpt")


def teacher_acc(r):
    """The teacher's accuracy a run measured, or (a long run's snapshot) the one its checkpoint records."""
    return r.get("teacher/acc", r.get("teacher/acc_recorded"))


def long_run_block():
    runs = long_runs()
    if not any(runs.values()):
        return "_Not started yet: `python bench/long_run.py`._"
    r0 = next((r for r in runs.values() if r and not brought_teacher(r)), next(r for r in runs.values() if r))
    others = {arm: r for arm, r in runs.items() if r and brought_teacher(r)}
    teachers = sorted({f"{Path(brought_teacher(r)).name}, {pct(teacher_acc(r))}%" for r in others.values()})
    heads = [samples(n) for n in LONG_RUN_POINTS]
    calibrated = {row["run"]: row for row in (read("calibrate_bn.json") or {"rows": []})["rows"]
                  if row.get("study") == "long_run"}
    rows = []
    for arm, _, label in LONG_RUN:
        r = runs[arm]
        if r is None:
            rows.append([f"`{arm}`", label, "", "not started", *[""] * (len(heads) + 3)])
            continue
        budget = r["args"]["steps"] * r["args"]["batch_size"]
        at = {row["samples_seen"]: accs(row) for row in r["curve"]}
        cal = r.get("calibrated") or calibrated.get(arm)  # an unfinished arm's snapshot, or bench/calibrate_bn.py's row
        rows.append([f"`{arm}`", label, samples(budget),
                     samples(r["samples_seen"]) + (" (unfinished)" if r.get("finished") is False else ""),
                     *[at.get(n, "") for n in LONG_RUN_POINTS], at.get(budget, ""),
                     "" if cal is None else pct(cal["acc_inverted"]) + (
                         f" (at {samples(cal['samples_seen'])})" if cal["samples_seen"] != budget else ""),
                     kd_loss(r)])
    return block(
        "`python bench/long_run.py --data-dir ../shared/data`: the shipped ResNet-20 "
        f"({pct(teacher_acc(r0))}%) -> ResNet-20"
        + (f" (the rows {', '.join(f'`{arm}`' for arm in others)}: the teacher {'; '.join(teachers)})"
           if others else "") + ", "
        + (f"seed {r0['args']['seed']}" if len({r["args"]["seed"] for r in runs.values() if r}) == 1 else
           "seed 0 unless the row says") + ". CIFAR-10 test accuracy (%) with the student's running statistics / with "
        "test-batch statistics (batch 256) after each number of noise samples, and at the end of the arm's budget; "
        "calibrated: plain eval mode after the BN statistics are re-estimated as `--calibrate-bn` does (by "
        "`bench/calibrate_bn.py`; for an unfinished arm, its latest checkpoint's student, by `long_run.py --snapshot "
        "--calibrate`); KD loss: the mean of the last 50 steps' logged KL (with the stage outputs: the KL term "
        "alone, or where the run did not log it apart, 'total': KL + weight x the stage-output loss). An unfinished "
        "run shows its curve so far (committed from its checkpoint with its run folder packed; it resumes when "
        "`long_run.py` runs that arm again, on another machine from the pack, or where neither is left starts anew "
        "from 0 with `--restart`). "
        + measured_on([(f"`{arm}`", r) for arm, r in runs.items() if r]),
        table("llrr" + "l" * (len(heads) + 1) + "rr",
              ["arm", "recipe", "budget", "samples so far", *heads, "end of budget", "calibrated", "KD loss"], rows),
        "![long runs](results/long_run.png)")


def long_run_figure(path):
    runs = long_runs()
    if not any(runs.values()):
        return
    curves = []
    for arm, color, _ in LONG_RUN:
        r = runs[arm]
        if r:
            # the KL term alone, as in the table (a run that matched the stage outputs without logging it apart: none)
            feat = r["args"].get("feature_weight")
            loss = (r.get("train_logit_loss_curve") if feat else r.get("train_loss_curve")) or []
            smooth = [(loss[i + 49][0], float(np.mean([v for _, v in loss[i:i + 50]])))
                      for i in range(0, len(loss) - 49, 25)]  # each point: the mean of 50 logged losses (500 steps)
            label = f"{arm}" + (" (so far)" if r.get("finished") is False else "")
            curves.append((r["curve"], dict(color=color, label=label), smooth))
    fig, axes = learning_curves(curves, (14, 4.4), "KD loss (KL, nats), mean of 500 steps")
    colour = {arm: c for arm, c, _ in LONG_RUN}
    lines = {brought_teacher(r): (colour[arm] if brought_teacher(r) else "k", teacher_acc(r))
             for arm, r in reversed(runs.items()) if r}  # per teacher, in the colour of its first arm (black: ours)
    for ax in axes[:2]:  # each teacher's accuracy: what its students could reach
        for c, acc in lines.values():
            ax.axhline(100 * acc, color=c, lw=0.6, ls="--")
        ax.set_ylim(0, 100)
    save(fig, path, axes[0], ncol=3, bottom=0.14)


def bn_ablation_block():
    runs = load("bn_ablation")
    if not runs:
        return "_No results yet: run `python bn_ablation.py` (see the command above)._"
    parts = []
    for stem, r in runs.items():
        a = r["args"]
        taught = any("eval/acc_running" in x for x in r["points"])
        students = (f"students: {r['samples_per_point']:,} noise samples each at the points that have them"
                    if taught else "teacher diagnostics only, no students in this run")
        header = ["point", "teacher acc", "noise-label entropy", "largest class"]
        if taught:
            header += ["student acc, running / test-batch", "agreement with teacher, running / test-batch"]
        rows = []
        for x in r["points"]:
            cells = [x["point"], pct(x["teacher/acc"]), ent(x["noise/label_entropy"]),
                     f"{pct(x['noise/label_max_share'])}%"]
            if taught and "eval/acc_running" in x:
                twin = f" (the student of {x['student_of']}: same configuration)" if "student_of" in x else ""
                cells += [accs(x) + twin, accs(x, ("eval/agreement_running", "eval/agreement_batchstats"))]
            elif taught:
                cells += [None, None]
            rows.append(cells)
        parts += [f"**{stem}**: teacher `{Path(r['teacher/ckpt']).name}`, {len(r['bn_layers'])} BatchNorm layers; "
                  f"noise labels from {probe_samples(a):,} samples in CS batches of {a['batch_size']}; teacher "
                  f"accuracy on {r['eval/num_images']:,} test images, CS layers with test-batch statistics (batch "
                  f"{a['eval_batch_size']}); {students} (`{a['command']}`). Measured on "
                  f"{device_of(r)}, {wall_time(r)}.",
                  table("lrrr" + "rr" * taught, header, rows), f"![BN ablation](results/bn_ablation_{stem}.png)"]
    return block(*parts)


def bn_ablation_figures():
    for stem, r in load("bn_ablation").items():
        taught = any("eval/acc_running" in x for x in r["points"])
        fig, axes = figure(2 if taught else 1, (11 if taught else 6, 4))
        for sweep in ("first-k", "last-k", "retrain"):
            points = [x for x in r["points"] if x["sweep"] == sweep]
            if not points:
                continue
            k = [x["k"] for x in points]
            axes[0].plot(k, [x["noise/label_entropy"] for x in points], marker="o", ms=3,
                         label=f"{sweep}: noise-label entropy")
            axes[0].plot(k, [x["teacher/acc"] for x in points], ls="--", label=f"{sweep}: teacher acc (real images)")
            if taught:  # a sweep without students still gets its (empty) lines, and so its legend entries
                students = [x for x in points if "eval/acc_batchstats" in x]
                k = [x["k"] for x in students]
                axes[1].plot(k, [100 * x["eval/acc_batchstats"] for x in students], marker="o",
                             label=f"{sweep}: test-batch stats")
                axes[1].plot(k, [100 * x["eval/acc_running"] for x in students], marker="s", ls=":",
                             label=f"{sweep}: running stats")
        axes[0].set_xlabel("k = stages with GroupNorm instead of BatchNorm (retrained teachers, the rest CS)"
                           if {x["sweep"] for x in r["points"]} == {"retrain"}
                           else "k = BatchNorm layers on running statistics")
        axes[0].set_title("teacher: labels on noise, accuracy on test images")
        if taught:
            axes[1].set_xlabel("k")
            axes[1].set_ylabel("student test accuracy (%)")
            axes[1].set_title(f"student, {r['samples_per_point'] // 1000}k noise samples")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, RESULTS / f"bn_ablation_{stem}.png")


BATCH_ALIGN_TEACHERS = [("gn", "ResNet-20, GroupNorm(8)"), ("ln", "ResNet-20, LayerNorm over (C, H, W)"),
                        ("vit", "ViT-tiny, LayerNorm"), ("bn", "control: ResNet-20, BatchNorm")]  # (file prefix, label)
BATCH_ALIGN_ARMS = {"plain": ("tab:gray", "no alignment"), "align": ("tab:blue", "alignment"),  # arm: colour, column
                    "align_reject": ("tab:orange", "alignment + rejection"),
                    "align_feat10": ("tab:red", "alignment + stage outputs")}


def batch_align_block():
    runs = load("batch_align")
    if not runs:
        return "_No results yet: run `python bench/batch_align.py`._"
    r0 = one_setting(runs, "results/batch_align", lambda r: (r["samples_seen"], r["args"]["seed"], r["eval/batch_size"],
                                                             r["eval/num_images"], r["args"]["student"]))
    entropy = lambda a: f"{ent(a['noise/label_entropy'])} ({pct(a['noise/label_max_share'])}%)" if a else "-"
    rows = []
    for prefix, label in BATCH_ALIGN_TEACHERS:
        arms = [runs.get(f"{prefix}__{arm}") for arm in BATCH_ALIGN_ARMS]
        if not any(arms):
            rows.append([label, "not run yet", None, None, None, None])
            continue
        r = next(a for a in arms if a)
        missing = lambda arm: "n/a (no stages like the student's)" if (prefix, arm) == ("vit", "align_feat10") \
            else "not run yet"  # bench/batch_align.py skips that arm: the ViT's blocks have no ResNet stage shapes
        rows.append([label, f"{pct(r['teacher/acc'])} / {pct(r.get('teacher/acc_aligned'))}",
                     f"{entropy(arms[0])}, {entropy(arms[1])}",
                     *(accs(a) if a else missing(arm) for a, arm in zip(arms, BATCH_ALIGN_ARMS))])
    return block(
        f"Teacher -> ResNet-20 (BN) student, CIFAR-10, {r0['samples_seen']:,} noise samples per arm, batch 256, "
        f"seed {r0['args']['seed']}. Teacher accuracy: fp32 eval mode, and with alignment on each test batch "
        f"of {r0['eval/batch_size']}. Noise-label entropy: the teacher's argmax histogram on the noise it saw in "
        "that arm, H / log K (largest class share in brackets). Student accuracy: running statistics / test-batch "
        f"statistics (batch {r0['eval/batch_size']}). For the BatchNorm control the arms are eval mode, CS and "
        "CS + rejection (cs_rejection_bn.py): CS is BatchNorm's own batch coupling. Stage outputs (ours): "
        "alignment (CS) without rejection, the teacher's stage outputs matched too at weight 10 "
        "(`--feature-weight 10`). " + measured_on([(f"{label}: {column}", runs[f"{prefix}__{arm}"])
                                                   for prefix, label in BATCH_ALIGN_TEACHERS
                                                   for arm, (_, column) in BATCH_ALIGN_ARMS.items()
                                                   if f"{prefix}__{arm}" in runs], what="runs"),
        table("lrrrrrr", ["teacher", "teacher acc (plain / aligned)", "noise-label entropy: plain, aligned",
                          *(("student: " if arm == "plain" else "") + column
                            for arm, (_, column) in BATCH_ALIGN_ARMS.items())], rows),
        "![batch alignment](results/batch_align.png)")


def batch_align_figure(path):
    runs = load("batch_align")
    if not runs:
        return
    teachers = [(p, label) for p, label in BATCH_ALIGN_TEACHERS if any(f"{p}__{a}" in runs for a in BATCH_ALIGN_ARMS)]
    fig, axes = figure(len(teachers), (4 * len(teachers), 3.8), sharey=True)
    for ax, (prefix, _) in zip(axes, teachers):
        for arm, (color, _) in BATCH_ALIGN_ARMS.items():
            if runs.get(f"{prefix}__{arm}"):
                curve = runs[f"{prefix}__{arm}"]["curve"]
                plot_accuracy(ax, curve, "eval/acc_batchstats", color=color, marker="o", ms=3,
                              label=f"{arm}: test-batch stats")
                plot_accuracy(ax, curve, "eval/acc_running", color=color, ls=":", label=f"{arm}: running stats")
    label_axes(axes, [label for _, label in teachers], fontsize=9)
    axes[0].set_ylabel("student CIFAR-10 test accuracy (%)")
    handles = {}  # one legend for every arm drawn in any panel (the first panel may lack an arm)
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0].legend(handles.values(), handles.keys(), fontsize=7)
    save(fig, path)


STUDENTS = [("resnet20_bn", "ResNet-20, BatchNorm"), ("resnet20_gn", "ResNet-20, GroupNorm(8)"),
            ("vit_tiny", "ViT-tiny, LayerNorm")]
STUDY_TEACHERS = [("bn", "BN ResNet-20 teacher, CS"), ("gn", "GN ResNet-20 teacher, alignment")]


def student_study_block():
    # {(teacher, student): results}; the BN-student runs are the align arms of bench/batch_align.py.
    runs = {tuple(stem.split("__")): r for stem, r in load("student_study").items() if stem != "test_time"}
    aligned = load("batch_align")
    runs |= {(t, "resnet20_bn"): aligned[f"{t}__align"] for t, _ in STUDY_TEACHERS if aligned.get(f"{t}__align")}
    if not any(student != "resnet20_bn" for _, student in runs):
        return "_No results yet: run `python bench/student_study.py` (after `bench/batch_align.py`)._"
    r0 = one_setting(runs, "the student study", lambda r: (r["samples_seen"], r["args"]["seed"], r["eval/batch_size"],
                                                           r["eval/num_images"]))
    test_time = read("student_study/test_time.json") or {"rows": []}
    later = {(x["teacher"], x["student"]): x for x in test_time["rows"]}
    rows = []
    for student, label in STUDENTS:
        cells, shares = [], []
        for teacher, _ in STUDY_TEACHERS:
            r, t = runs.get((teacher, student)), later.get((teacher, student))
            if not r:
                cells.append("not run yet")
                continue
            second = r["eval/acc_batchstats"] if student == "resnet20_bn" else t and t["coupled/acc"]
            cells.append(pct(r["eval/acc_running"]) + ("" if second is None else f" / {pct(second)}"))
            if t:
                shares.append(f"{pct(t['plain/pred_max_share'])}% / {pct(t['coupled/pred_max_share'])}%")
        rows.append([label, *cells, ", ".join(shares) or "n/a"])
    header = ["student", *(label for _, label in STUDY_TEACHERS),
              "largest class: " + ", ".join(label.split(" ")[0] + " teacher" for _, label in STUDY_TEACHERS)]
    return block(
        f"{r0['samples_seen']:,} noise samples per run, seed {r0['args']['seed']}, CIFAR-10 test "
        "accuracy of the student as it is (BatchNorm on its running statistics) / with the statistics of each "
        f"test batch of {r0['eval/batch_size']}: BatchNorm in batch mode for the BatchNorm students, batch "
        "alignment in front of every GroupNorm or LayerNorm layer for the others (measured afterwards from the "
        f"final checkpoints: `{test_time.get('args', {}).get('command', 'python bench/student_study.py')}`, "
        "results/student_study/test_time.json). The BatchNorm-student row is the alignment column (CS for the "
        "BatchNorm teacher) of the table above; no run here uses rejection. Largest class: the share of the test "
        "images the student puts in its most frequent class (as it is / with test-batch statistics). Measured on "
        + device_of(r0) + ".",
        table("l" + "r" * (len(STUDY_TEACHERS) + 1), header, rows))


def vit_account_block():
    """The account that vit_failure_analysis.py tests, as its docstring states it (the README shows it above the
    measured table; tests/test_vit_failure_analysis.py keeps the two texts the same)."""
    return (
        "Cut an image of iid N(0, 1) pixels into L patches: the patches are iid, so the tokens x_i = W p_i + e_i "
        "(patch embedding plus position embedding) are independent, and exchangeable up to their position terms. "
        "Per-token LayerNorm maps every token to the same norm, so no token stands out by scale. Attention logits "
        "q_i.k_j between unstructured tokens carry no strong preference, so attention stays spread (entropy near log "
        "L) and each output is close to an average, o_i = sum_j a_ij v_j ~ (1/L) sum_j v_j. An average of L "
        "independent terms concentrates around its mean: its fluctuation from one noise image to the next has variance "
        "~ s^2 / L, while the mean mu (set by the weights and position embeddings, the same for every noise image) "
        "stays. The residual stream adds these concentrated updates layer after layer, the class token reads out an "
        "average as well, and the head is a fixed map of it. Hence, on noise:"
        "\n\n- **P1** attention is near uniform: entropy / log L close to 1, and higher than on real images;"
        "\n- **P2** tokens within an image become alike with depth (mean token-token cosine rises);"
        "\n- **P3** the pooled representation is nearly the same for every noise image (sample-sample cosine near 1) "
        "and the logits nearly constant: their between-sample variance is far below that on real images, and the "
        "argmax label histogram collapses (normalized entropy near 0);"
        "\n- **P4** that between-sample variance shrinks like 1/L: slope about -1 of log variance against log L, "
        "varying L through the image size (patch 4; the position embeddings interpolated to the new grid);"
        "\n- **P5** batch alignment (batch_align_ln_gn.py), which subtracts the common component mu across the batch "
        "and rescales what varies, undoes P3: label entropy rises."
        "\n\nA CNN pools too (global average over (H/4)(W/4) positions), so the same averaging argument applies to it; "
        "a BatchNorm CNN in eval mode is measured as the contrast, and in CS mode as BatchNorm's own batch coupling. "
        "Where a prediction fails, the README says so: the account is a hypothesis, not a result.")


def where(rows, **values):
    """The rows of results/vit_failure/analysis.json that have these values."""
    return [x for x in rows if all(x[k] == v for k, v in values.items())]


def vit_failure_block():
    r = read("vit_failure/analysis.json")
    if r is None:
        return "_No results yet: run `python vit_failure_analysis.py` (see the command above)._"
    a = r["args"]
    rows = []
    for model in dict.fromkeys(x["model"] for x in r["rows"]):
        for source in ("noise", "real"):
            p, c = (where(r["rows"], model=model, input=source, size=32, coupled=b) for b in (False, True))
            if not p or not c:
                continue
            p, c = p[0], c[0]
            s = [next(x["slope"] for x in r["slopes"] if (x["model"], x["input"], x["coupled"]) == (model, source, b))
                 for b in (False, True)]
            rows.append([f"{model} ({pct(r['teachers'][model]['acc'])}%)", source,
                         f"{ent(p['label_entropy'])} / {ent(c['label_entropy'])}",
                         f"{p['logit_var']:.3g} / {c['logit_var']:.3g}",
                         f"{p['sample_cosine']:.3f} / {c['sample_cosine']:.3f}", f"{s[0]:.2f} / {s[1]:.2f}"])
    return block(
        f"`{a['command']}`: {probe_samples(a)} images per condition, batches of {a['batch_size']}, sizes "
        f"{', '.join(map(str, a['sizes']))} (L = (size / 4)^2 tokens or pooled positions). Coupled: batch "
        "alignment for per-sample norms, CS for BatchNorm. Logit variance: between samples, mean over classes. "
        f"Measured on {device_of(r)}, {r['provenance']['wall_time_s'] / 60:.0f} min.",
        table("llrrrr", ["teacher", "input, size 32", "label entropy: plain / coupled",
                         "logit variance: plain / coupled", "sample cosine: plain / coupled",
                         "slope of log variance vs log L: plain / coupled"], rows),
        table("llll", ["teacher", "prediction", "measured", "holds"],
              [[c["model"], c["prediction"], c["measured"], "yes" if c["holds"] else "**no**"] for c in r["checks"]]),
        "![ViT failure analysis](results/vit_failure.png)")


def vit_failure_figure(path):
    r = read("vit_failure/analysis.json")
    if r is None:
        return
    rows = r["rows"]
    fig, axes = figure(3, (15, 4.2))
    styles = {("noise", False): ("-", "noise"), ("noise", True): ("--", "noise, coupled"),
              ("real", False): (":", "real")}
    models = dict.fromkeys(x["model"] for x in rows)
    for model, color in zip(models, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")):
        for (source, coupled), (ls, tag) in styles.items():
            at32 = where(rows, model=model, input=source, size=32, coupled=coupled)
            if not at32:
                continue
            x, style = at32[0], dict(ls=ls, color=color, marker="o", ms=3, label=f"{model}, {tag}")
            if x["attn_entropy_norm"]:
                axes[0].plot(range(1, len(x["attn_entropy_norm"]) + 1), x["attn_entropy_norm"], **style)
            axes[1].plot(range(1, len(x["token_cosine"]) + 1), x["token_cosine"], **style)
            sweep = sorted(where(rows, model=model, input=source, coupled=coupled), key=lambda s: s["tokens"])
            axes[2].loglog([s["tokens"] for s in sweep], [s["logit_var"] for s in sweep], **style)
    axes[0].set(title="ViT attention entropy / log(L + 1), size 32", xlabel="layer")
    axes[1].set(title="mean token-token cosine, size 32", xlabel="block")
    axes[2].set(title="between-sample logit variance", xlabel="L (tokens / pooled positions)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=6)
    save(fig, path)


def throughput_block():
    r = read("throughput.json")
    if r is None:
        return "_No results yet: run `python bench/throughput.py`._"
    both = lambda key: [f"{pct(r[key + '_fp32'])}%", f"{pct(r[key + '_bf16'])}%"]  # one measure, fp32 and bf16
    rows = [["KD step (CS teacher forward, student forward + backward, Adam), samples/s",
             f"{r['kd_step_samples_per_s_fp32']:.0f}", f"{r['kd_step_samples_per_s_bf16']:.0f}"],
            ["rejection sampler's own code (timed inside `draw_batch`), share of a KD step",
             *both("sampler_timer_frac_of_step")],
            [f"`draw_batch` reject minus none at equal teacher compute (2 x {r['batch_size']} samples), share of a KD "
             "step", *both("sampler_overhead_frac_of_step")]]
    return block(
        f"`python bench/throughput.py`, ResNet-20 -> ResNet-20, batch {r['batch_size']}, median of {r['repeats']} "
        f"steps, on {device_of(r)}:",
        table("lrr", [None, "fp32", "bf16 autocast + channels_last"], rows),
        "The second measure is the difference of two medians of a full teacher forward, so its noise is a few "
        "percent of a step; the first times only the sampler's own code. Rejection's real cost is the extra teacher "
        "compute (pools of 2B), visible in the student samples/s column of the table in \"CS + rejection on "
        "CIFAR-10\".")


def teachers_block():
    manifest = sorted(json.loads((REPO / "teachers" / "manifest.json").read_text()).items())
    return block(
        table("lllrrrl", ["file", "arch / norm", "dataset", "test acc (fp32, eval mode)", "seed", "training time",
                          "sha256"],
              [[f"`teachers/{name}`", f"{t['arch']} / {t['norm']}", t["dataset"], f"{pct(t['test_acc'])}%", t["seed"],
                f"{t['train_time_s'] / 60:.0f} min", f"`{t['sha256'][:16]}...`"] for name, t in manifest]),
        *(f"`{name}`: `{t['command']}`" + (f" ({t['note']})" if t.get("note") else "") for name, t in manifest))


SIZES = [  # (file, what it holds): the table of the project's files and their sizes, counted when it is generated
    ("cs_rejection_bn.py", "the paper's method (the CS forward, the rejection sampler, the KD loss), our three "
     "additions (fitted noise, stage outputs, BN calibration), the switches the studies turn, exact resume, torchrun"),
    ("batch_align_ln_gn.py", "batch alignment for LayerNorm / GroupNorm teachers, its copies of the rejection "
     "sampler and the losses, stage outputs, resume, torchrun"),
    ("bn_ablation.py", "which BatchNorm layers of a teacher need current statistics, and which part of them: the "
     "sweeps, their short distillations, the retrained GroupNorm-first teachers"),
    ("vit_failure_analysis.py", "why ViTs fail on noise: the account's predictions, each measured on noise and on "
     "real images"),
    ("train_teacher.py", "supervised training of a teacher, the one place real training images are read"),
    ("common.py", "no method: models (CIFAR ResNets in akamaster's parameter names, ResNet-18/34 with the CIFAR stem, "
     "a ViT written out so its attention can be hooked, torchvision's ImageNet models), checkpoints with the checks "
     "a user's own file needs, the data cache with its checks, noise, the two evaluation protocols, run folders and "
     "resume, torchrun helpers, provenance"),
]


def sizes_block():
    lines = lambda name: len((REPO / name).read_text().splitlines())
    return block(table("lrl", ["file", "lines", "what it holds"], [[f"`{f}`", lines(f), what] for f, what in SIZES]))


BLOCKS = {"bn_variants": bn_variants_block, "throughput": throughput_block, "teachers": teachers_block,
          "bn_ablation": bn_ablation_block, "default_run": default_run_block, "pair_run": pair_run_block,
          "gpu_pair": gpu_pair_block, "seeds": seeds_block,
          "batch_align": batch_align_block, "student_study": student_study_block, "vit_account": vit_account_block,
          "vit_failure": vit_failure_block, "noise_fit": noise_fit_block, "calibrate_bn": calibrate_bn_block,
          "headline": headline_block, "history": history_block, "factors": factors_block,
          "teacher_on_noise": teacher_on_noise_block, "long_run": long_run_block, "sizes": sizes_block}
FIGURES = {"bn_variants.png": bn_variants_figure, "bn_ablation_*.png": lambda path: bn_ablation_figures(),
           "batch_align.png": batch_align_figure, "vit_failure.png": vit_failure_figure,
           "noise_fit.png": noise_fit_figure, "factors.png": factors_figure, "long_run.png": long_run_figure}


def render(readme):
    """README.md's text with every generated block rewritten from results/."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n)(?:.*?\n)?(<!-- END {name} -->)", re.S)
        if not pattern.search(readme):
            raise ValueError(f"README.md has no generated block '{name}'")
        readme = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), readme)
    return readme


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = p.parse_args()
    readme_path = REPO / "README.md"
    current = readme_path.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            sys.exit("README.md is out of date with results/: run python bench/report.py")
        print("README.md matches results/")
        return
    readme_path.write_text(fresh)
    for name, draw in FIGURES.items():
        draw(RESULTS / name)
    print("wrote README.md and", ", ".join(FIGURES))


if __name__ == "__main__":
    main()
