"""Generate the README's results tables and the figures from the committed results/*.json files.

    python bench/report.py           # rewrite the generated blocks of README.md and the figures in results/
    python bench/report.py --check   # exit 1 when README.md disagrees with results/ (the test suite runs this)

A generated block sits between '<!-- BEGIN name -->' and '<!-- END name -->' in README.md; nothing in it is typed
by hand.
"""
import argparse
import ast
import json
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"

BN_VARIANTS = [  # (file stem, label): the order of the table's rows
    ("prior_recipe", "prior work's recipe: CS, no balancing, Adam 1e-3 constant"),
    ("running", "baseline: teacher in eval mode (running statistics)"),
    ("cs", "CS"),
    ("cs_reject", "CS + rejection (NormShift-KD, white noise)"),
    ("cs_reweight", "CS + reweighting"),
    ("cs_reject_alpha2", "CS + rejection, 1/f^2 noise (`--noise-alpha 2`)"),
    ("cs_b64", "CS, batch 64 (4x the updates for the same samples)"),
]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported only when a figure is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_with_legend(plt, fig, ax, path, ncol, bottom):
    """Label ax's y axis as test accuracy, put its legend under the figure, save the figure to path and close it."""
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load(folder):
    return {p.stem: json.loads(p.read_text()) for p in sorted((RESULTS / folder).glob("*.json"))}


def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}"


def ent(x):
    return f"{x + 0.0:.3f}"  # + 0.0 turns the -0.0 of an empty-sum entropy into 0.0


def bn_variants_block():
    runs = load("bn_variants")
    if not runs:
        return "_No results yet: run `python bench/bn_variants.py`._"
    any_run = next(iter(runs.values()))
    # One table, one setting: the budget, seed, teacher and test batch size must be the same in every row.
    same = lambda r: (r["samples_seen"], r["args"]["seed"], r["teacher/sha256"], r["eval/batch_size"], r["eval/num_images"])
    if len({same(r) for r in runs.values()}) != 1:
        raise ValueError(f"results/bn_variants mixes settings: { {k: same(r) for k, r in runs.items()} }")
    lines = [
        f"Shared ResNet-20 teacher (test accuracy {pct(any_run['teacher/acc'])}% as measured by the run) -> ResNet-20 "
        f"student, CIFAR-10, {any_run['samples_seen']:,} noise samples each (batch 256 unless said), "
        f"seed {any_run['args']['seed']}. Accuracy on the {any_run['eval/num_images']:,} test images with the student's "
        f"running statistics (eval mode) and with each test batch's statistics (batch {any_run['eval/batch_size']}). "
        "Noise-label entropy: the teacher's argmax histogram on raw noise, H / log K; accepted: on the batches the "
        "student trained on. Measured on " + any_run["provenance"]["device"] + ".",
        "",
        "| variant | acc, running stats | acc, test-batch stats | noise-label entropy | accepted entropy "
        "| largest class (raw / accepted) | acceptance | student samples/s | sampler time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stem, label in BN_VARIANTS:
        if stem not in runs:
            lines.append(f"| {label} | not run yet | | | | | | | |")
            continue
        r = runs[stem]
        lines.append(
            f"| {label} | {pct(r['eval/acc_running'])} | {pct(r['eval/acc_batchstats'])} "
            f"| {ent(r['noise/label_entropy'])} | {ent(r['noise/accepted_label_entropy'])} "
            f"| {pct(r['noise/label_max_share'])}% / {pct(r['noise/accepted_max_share'])}% "
            f"| {r['noise/acceptance_rate']:.2f} | {r['samples_per_s']:.0f} | {pct(r['sampler_time_frac'])}% |")
    lines += ["", "![learning curves](results/bn_variants.png)"]
    return "\n".join(lines)


def seeds_block():
    seeds = sorted({p.parent.name for p in RESULTS.glob("bn_variants_seed*/*.json")})  # folder names
    if not seeds:
        return "_No second seed yet._"
    base, labels = load("bn_variants"), dict(BN_VARIANTS)
    lines = ["Final accuracy, running stats / test-batch stats, same setting as the table above, other seeds "
             "(`python bench/bn_variants.py --data-dir ../shared/data --seed S --only ... --out results/bn_variants_seedS`):",
             "", "| variant | seed 0 | " + " | ".join(f"seed {s.removeprefix('bn_variants_seed')}" for s in seeds) + " |",
             "|---|---:|" + "---:|" * len(seeds)]
    for stem, label in BN_VARIANTS:
        cells = [load(s).get(stem) for s in seeds]
        if not any(cells):
            continue
        fmt = lambda r: f"{pct(r['eval/acc_running'])} / {pct(r['eval/acc_batchstats'])}" if r else "not run"
        lines.append(f"| {labels[stem]} | {fmt(base.get(stem))} | " + " | ".join(fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def bn_variants_figure(path):
    plt = pyplot()
    runs = load("bn_variants")
    if not runs:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for stem, label in BN_VARIANTS:
        if stem not in runs:
            continue
        curve = runs[stem]["curve"]
        x = [row["samples_seen"] / 1000 for row in curve]
        for ax, key in zip(axes, ("eval/acc_running", "eval/acc_batchstats")):
            ax.plot(x, [100 * row[key] for row in curve], marker="o", ms=3, label=label)
    for ax, title in zip(axes, ("student in eval mode (running statistics)", "test-batch statistics")):
        ax.set_title(title)
        ax.set_xlabel("noise samples seen (thousands)")
        ax.grid(alpha=0.3)
    save_with_legend(plt, fig, axes[0], path, ncol=3, bottom=0.14)


def bn_ablation_results():
    files = sorted((RESULTS / "bn_ablation").glob("*.json"))
    return [(p.stem, json.loads(p.read_text())) for p in files]


def bn_ablation_block():
    runs = bn_ablation_results()
    if not runs:
        return "_No results yet: run `python bn_ablation.py` (see the command above)._"
    lines = []
    for stem, r in runs:
        a = r["args"]
        taught = any("eval/acc_running" in row for row in r["points"])
        students = (f"students: {r['samples_per_point']:,} noise samples each at the points that have them"
                    if taught else "teacher diagnostics only, no students in this run")
        lines += [f"**{stem}**: teacher `{Path(r['teacher/ckpt']).name}`, {len(r['bn_layers'])} BatchNorm layers; "
                  f"noise labels from {a['diag_samples']:,} samples in CS batches of {a['batch_size']}; teacher "
                  f"accuracy on {r['eval/num_images']:,} test images, CS layers with test-batch statistics (batch "
                  f"{a['eval_batch_size']}); {students} (`{a['command']}`). Measured on "
                  f"{r['provenance']['device']}, {r['provenance']['wall_time_s'] / 60:.0f} min.", "",
                  "| point | teacher acc | noise-label entropy | largest class |"
                  + (" student acc, running / test-batch | agreement with teacher, running / test-batch |" if taught
                     else ""), "|---|---:|---:|---:|" + ("---:|---:|" if taught else "")]
        for row in r["points"]:
            line = (f"| {row['point']} | {pct(row['teacher/acc'])} | {ent(row['noise/label_entropy'])} "
                    f"| {pct(row['noise/label_max_share'])}% |")
            if taught and "eval/acc_running" in row:
                twin = f" (the student of {row['student_of']}: same configuration)" if "student_of" in row else ""
                line += (f" {pct(row['eval/acc_running'])} / {pct(row['eval/acc_batchstats'])}{twin} "
                         f"| {pct(row['eval/agreement_running'])} / {pct(row['eval/agreement_batchstats'])} |")
            elif taught:
                line += " | |"
            lines.append(line)
        lines += ["", f"![BN ablation](results/bn_ablation_{stem}.png)", ""]
    return "\n".join(lines).rstrip()


def bn_ablation_figures():
    plt = pyplot()
    for stem, r in bn_ablation_results():
        taught_any = any("eval/acc_running" in row for row in r["points"])
        fig, axes = plt.subplots(1, 2 if taught_any else 1, figsize=(11 if taught_any else 6, 4), squeeze=False)
        axes = axes[0]
        for sweep in ("first-k", "last-k", "retrain"):
            rows = [row for row in r["points"] if row["sweep"] == sweep]
            if not rows:
                continue
            axes[0].plot([row["k"] for row in rows], [row["noise/label_entropy"] for row in rows], marker="o", ms=3,
                         label=f"{sweep}: noise-label entropy")
            axes[0].plot([row["k"] for row in rows], [row["teacher/acc"] for row in rows], ls="--",
                         label=f"{sweep}: teacher acc (real images)")
            taught = [row for row in rows if "eval/acc_batchstats" in row]
            if not taught_any:
                continue
            axes[1].plot([row["k"] for row in taught], [100 * row["eval/acc_batchstats"] for row in taught],
                         marker="o", label=f"{sweep}: test-batch stats")
            axes[1].plot([row["k"] for row in taught], [100 * row["eval/acc_running"] for row in taught],
                         marker="s", ls=":", label=f"{sweep}: running stats")
        sweeps = {row["sweep"] for row in r["points"]}
        axes[0].set_xlabel("k = stages with GroupNorm instead of BatchNorm (retrained teachers, the rest CS)"
                           if sweeps == {"retrain"} else "k = BatchNorm layers on running statistics")
        axes[0].set_title("teacher: labels on noise, accuracy on test images")
        if taught_any:
            axes[1].set_xlabel("k")
            axes[1].set_ylabel("student test accuracy (%)")
            axes[1].set_title(f"student, {r['samples_per_point'] // 1000}k noise samples")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / f"bn_ablation_{stem}.png", dpi=110)
        plt.close(fig)


BATCH_ALIGN_TEACHERS = [  # (file prefix, label)
    ("gn", "ResNet-20, GroupNorm(8)"),
    ("ln", "ResNet-20, LayerNorm over (C, H, W)"),
    ("vit", "ViT-tiny, LayerNorm"),
    ("bn", "control: ResNet-20, BatchNorm"),
]
BATCH_ALIGN_ARMS = ["plain", "align", "align_reject"]


def batch_align_block():
    runs = load("batch_align")
    if not runs:
        return "_No results yet: run `python bench/batch_align.py`._"
    same = lambda r: (r["samples_seen"], r["args"]["seed"], r["eval/batch_size"], r["eval/num_images"], r["args"]["student"])
    if len({same(r) for r in runs.values()}) != 1:
        raise ValueError(f"results/batch_align mixes settings: { {k: same(r) for k, r in runs.items()} }")
    any_run = next(iter(runs.values()))
    lines = [
        f"Teacher -> ResNet-20 (BN) student, CIFAR-10, {any_run['samples_seen']:,} noise samples per arm, batch 256, "
        f"seed {any_run['args']['seed']}. Teacher accuracy: fp32 eval mode, and with alignment on each test batch "
        f"of {any_run['eval/batch_size']}. Noise-label entropy: the teacher's argmax histogram on the noise it saw in "
        "that arm, H / log K (largest class share in brackets). Student accuracy: running statistics / test-batch "
        f"statistics (batch {any_run['eval/batch_size']}). For the BatchNorm control the arms are eval mode, CS and "
        "CS + rejection (cs_rejection_bn.py): CS is BatchNorm's own batch coupling. Measured on "
        + any_run["provenance"]["device"] + ".",
        "",
        "| teacher | teacher acc (plain / aligned) | noise-label entropy: plain, aligned | student: no alignment "
        "| alignment | alignment + rejection |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for prefix, label in BATCH_ALIGN_TEACHERS:
        arms = {arm: runs.get(f"{prefix}__{arm}") for arm in BATCH_ALIGN_ARMS}
        if not any(arms.values()):
            lines.append(f"| {label} | not run yet | | | | |")
            continue
        r = next(a for a in arms.values() if a)
        acc = (f"{pct(r['teacher/acc'])} / {pct(r['teacher/acc_aligned'])}" if "teacher/acc_aligned" in r
               else f"{pct(r['teacher/acc'])} / n/a")
        entropy = lambda a: (f"{ent(a['noise/label_entropy'])} ({pct(a['noise/label_max_share'])}%)" if a else "-")
        student = lambda a: f"{pct(a['eval/acc_running'])} / {pct(a['eval/acc_batchstats'])}" if a else "not run yet"
        lines.append(f"| {label} | {acc} | {entropy(arms['plain'])}, {entropy(arms['align'])} "
                     f"| {student(arms['plain'])} | {student(arms['align'])} | {student(arms['align_reject'])} |")
    lines += ["", "![batch alignment](results/batch_align.png)"]
    return "\n".join(lines)


def batch_align_figure(path):
    plt = pyplot()
    runs = load("batch_align")
    if not runs:
        return
    teachers = [(p, label) for p, label in BATCH_ALIGN_TEACHERS if any(f"{p}__{a}" in runs for a in BATCH_ALIGN_ARMS)]
    fig, axes = plt.subplots(1, len(teachers), figsize=(4 * len(teachers), 3.8), sharey=True, squeeze=False)
    for ax, (prefix, label) in zip(axes[0], teachers):
        for arm, color in zip(BATCH_ALIGN_ARMS, ("tab:gray", "tab:blue", "tab:orange")):
            r = runs.get(f"{prefix}__{arm}")
            if not r:
                continue
            x = [row["samples_seen"] / 1000 for row in r["curve"]]
            ax.plot(x, [100 * row["eval/acc_batchstats"] for row in r["curve"]], color=color, marker="o", ms=3,
                    label=f"{arm}: test-batch stats")
            ax.plot(x, [100 * row["eval/acc_running"] for row in r["curve"]], color=color, ls=":",
                    label=f"{arm}: running stats")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("noise samples seen (thousands)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("student CIFAR-10 test accuracy (%)")
    handles = {}  # one legend for every arm drawn in any panel (the first panel may lack an arm)
    for ax in axes[0]:
        handles |= {lab: h for h, lab in zip(*ax.get_legend_handles_labels()) if lab not in handles}
    axes[0][0].legend(handles.values(), handles.keys(), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STUDENTS = [("resnet20_bn", "ResNet-20, BatchNorm"), ("resnet20_gn", "ResNet-20, GroupNorm(8)"),
            ("vit_tiny", "ViT-tiny, LayerNorm")]
STUDY_TEACHERS = [("bn", "BN ResNet-20 teacher, CS"), ("gn", "GN ResNet-20 teacher, alignment")]


def student_study_runs():
    """{(teacher, student): results}; the BN-student runs are the align arms of bench/batch_align.py."""
    runs = {tuple(stem.split("__")): r for stem, r in load("student_study").items() if stem != "test_time"}
    for teacher, _ in STUDY_TEACHERS:
        r = load("batch_align").get(f"{teacher}__align")
        if r:
            runs[(teacher, "resnet20_bn")] = r
    return runs


def student_study_block():
    runs = student_study_runs()
    if not any(student != "resnet20_bn" for _, student in runs):
        return "_No results yet: run `python bench/student_study.py` (after `bench/batch_align.py`)._"
    same = lambda r: (r["samples_seen"], r["args"]["seed"], r["eval/batch_size"], r["eval/num_images"])
    if len({same(r) for r in runs.values()}) != 1:
        raise ValueError(f"the student study mixes settings: { {k: same(r) for k, r in runs.items()} }")
    path = RESULTS / "student_study" / "test_time.json"
    test_time = json.loads(path.read_text()) if path.exists() else {"rows": []}
    later = {(x["teacher"], x["student"]): x for x in test_time["rows"]}
    any_run = next(iter(runs.values()))
    lines = [f"{any_run['samples_seen']:,} noise samples per run, seed {any_run['args']['seed']}, CIFAR-10 test "
             "accuracy of the student as it is (BatchNorm on its running statistics) / with the statistics of each "
             f"test batch of {any_run['eval/batch_size']}: BatchNorm in batch mode for the BatchNorm students, batch "
             "alignment in front of every GroupNorm or LayerNorm layer for the others (measured afterwards from the "
             f"final checkpoints: `{test_time.get('args', {}).get('command', 'python bench/student_study.py')}`, "
             "results/student_study/test_time.json). The BatchNorm-student row is the alignment column (CS for the "
             "BatchNorm teacher) of the table above; no run here uses rejection. Largest class: the share of the test "
             "images the student puts in its most frequent class (as it is / with test-batch statistics). Measured on "
             + any_run["provenance"]["device"] + ".",
             "", "| student | " + " | ".join(label for _, label in STUDY_TEACHERS) + " | largest class: "
             + ", ".join(label.split(" ")[0] + " teacher" for _, label in STUDY_TEACHERS) + " |",
             "|---|" + "---:|" * (len(STUDY_TEACHERS) + 1)]
    for student, label in STUDENTS:
        cells, shares = [], []
        for teacher, _ in STUDY_TEACHERS:
            r, t = runs.get((teacher, student)), later.get((teacher, student))
            if not r:
                cells.append("not run yet")
                continue
            second = r["eval/acc_batchstats"] if student == "resnet20_bn" else t and t["coupled/acc"]
            cells.append(f"{pct(r['eval/acc_running'])} / {pct(second)}" if second is not None
                         else pct(r["eval/acc_running"]))
            if t:
                shares.append(f"{pct(t['plain/pred_max_share'])}% / {pct(t['coupled/pred_max_share'])}%")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {', '.join(shares) or 'n/a'} |")
    return "\n".join(lines)


def vit_account_block():
    """The account and its predictions, from vit_failure_analysis.py's docstring (one text, kept in the script)."""
    doc = ast.get_docstring(ast.parse((REPO / "vit_failure_analysis.py").read_text()))
    text = re.split(r"\n-{20,}\n", doc)[1].split("\n\n")[0]  # after the underline, before the usage line
    lines, out = text.splitlines(), []
    for line in lines:
        item = re.match(r"\s+(P\d)\s+(.*)", line)
        if item:
            out += [""] if not out[-1].startswith("- ") else []
            out.append(f"- **{item[1]}** {item[2]}")
        elif line.startswith("    ") and out and out[-1].startswith("- "):
            out[-1] += " " + line.strip()  # a prediction's continuation line
        elif out and not out[-1].startswith("- ") and out[-1] != "":
            out[-1] += " " + line.strip()
        else:
            out += [""] if out else []
            out.append(line.strip())
    return "\n".join(out)


def vit_failure_block():
    path = RESULTS / "vit_failure" / "analysis.json"
    if not path.exists():
        return "_No results yet: run `python vit_failure_analysis.py` (see the command above)._"
    r = json.loads(path.read_text())
    rows, a = r["rows"], r["args"]
    get = lambda **kw: [x for x in rows if all(x[k] == v for k, v in kw.items())]
    lines = [f"`{a['command']}`: {a['samples']} images per condition, batches of {a['batch_size']}, sizes "
             f"{', '.join(map(str, a['sizes']))} (L = (size / 4)^2 tokens or pooled positions). Coupled: batch "
             "alignment for per-sample norms, CS for BatchNorm. Logit variance: between samples, mean over classes. "
             f"Measured on {r['provenance']['device']}, {r['provenance']['wall_time_s'] / 60:.0f} min.", "",
             "| teacher | input, size 32 | label entropy: plain / coupled | logit variance: plain / coupled "
             "| sample cosine: plain / coupled | slope of log variance vs log L: plain / coupled |",
             "|---|---|---:|---:|---:|---:|"]
    for model in dict.fromkeys(x["model"] for x in rows):
        for source in ("noise", "real"):
            p32, c32 = get(model=model, input=source, size=32, coupled=False), get(model=model, input=source, size=32,
                                                                                   coupled=True)
            if not p32 or not c32:
                continue
            slopes = [next(x["slope"] for x in r["slopes"] if (x["model"], x["input"], x["coupled"]) == (model, source, c))
                      for c in (False, True)]
            p, c = p32[0], c32[0]
            lines.append(f"| {model} ({pct(r['teachers'][model]['acc'])}%) | {source} | {ent(p['label_entropy'])} / "
                         f"{ent(c['label_entropy'])} | {p['logit_var']:.3g} / {c['logit_var']:.3g} | "
                         f"{p['sample_cosine']:.3f} / {c['sample_cosine']:.3f} | {slopes[0]:.2f} / {slopes[1]:.2f} |")
    lines += ["", "| teacher | prediction | measured | holds |", "|---|---|---|---|"]
    for c in r["checks"]:
        lines.append(f"| {c['model']} | {c['prediction']} | {c['measured']} | {'yes' if c['holds'] else '**no**'} |")
    lines += ["", "![ViT failure analysis](results/vit_failure.png)"]
    return "\n".join(lines)


def vit_failure_figure(path):
    plt = pyplot()
    src = RESULTS / "vit_failure" / "analysis.json"
    if not src.exists():
        return
    rows = json.loads(src.read_text())["rows"]
    get = lambda **kw: [x for x in rows if all(x[k] == v for k, v in kw.items())]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = {("noise", False): ("-", "noise"), ("noise", True): ("--", "noise, coupled"), ("real", False): (":", "real")}
    models = list(dict.fromkeys(x["model"] for x in rows))
    for model, color in zip(models, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")):
        for (source, coupled), (ls, tag) in styles.items():
            at32 = get(model=model, input=source, size=32, coupled=coupled)
            if not at32:
                continue
            x = at32[0]
            if x["attn_entropy_norm"]:
                axes[0].plot(range(1, len(x["attn_entropy_norm"]) + 1), x["attn_entropy_norm"], ls=ls, color=color,
                             marker="o", ms=3, label=f"{model}, {tag}")
            axes[1].plot(range(1, len(x["token_cosine"]) + 1), x["token_cosine"], ls=ls, color=color, marker="o",
                         ms=3, label=f"{model}, {tag}")
            sweep = sorted(get(model=model, input=source, coupled=coupled), key=lambda s: s["tokens"])
            axes[2].loglog([s["tokens"] for s in sweep], [s["logit_var"] for s in sweep], ls=ls, color=color,
                           marker="o", ms=3, label=f"{model}, {tag}")
    axes[0].set(title="ViT attention entropy / log(L + 1), size 32", xlabel="layer")
    axes[1].set(title="mean token-token cosine, size 32", xlabel="block")
    axes[2].set(title="between-sample logit variance", xlabel="L (tokens / pooled positions)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


NOISE_FIT_ROWS = [  # (teacher, arm, label): the order of the table's rows
    ("aka20", "prior_white", "shared ResNet-20 (91.7%)", "prior work's recipe, white noise (the paper's)"),
    ("aka20", "prior_fit", "shared ResNet-20 (91.7%)", "prior work's recipe, fitted noise (`--fit-noise`)"),
    ("ours20", "default_white", "shipped ResNet-20 (89.9%)", "our recipe (CS + rejection, Adam 2e-3 cosine), white"),
    ("ours20", "default_fit", "shipped ResNet-20 (89.9%)", "our recipe, fitted noise"),
]


def at_samples(curve, samples, key):
    """The value of key at the evaluation that has seen `samples` noise samples (None when there is none)."""
    return next((row[key] for row in curve if row["samples_seen"] == samples), None)


def noise_fit_runs():
    """results/noise_fit/, plus the prior recipe's white-noise run of results/bn_variants (seed 0, same teacher and
    flags, 256k samples: its first 128k are the same run) where this bench has not run that seed itself."""
    runs = load("noise_fit")
    prior = RESULTS / "bn_variants" / "prior_recipe.json"
    if runs and "aka20__prior_white__s0" not in runs and prior.exists():
        runs["aka20__prior_white__s0"] = {**json.loads(prior.read_text()), "source": "results/bn_variants"}
    return runs


def noise_fit_block():
    runs = noise_fit_runs()
    if not runs:
        return "_No results yet: run `python bench/noise_fit.py`._"
    points = sorted({row["samples_seen"] for r in runs.values() if "source" not in r for row in r["curve"]})
    head = " / ".join(f"{n // 1000}k" for n in points)
    lines = [f"ResNet-20 students, CIFAR-10 test accuracy (%) after {head} noise samples, with the student's running "
             "statistics (eval mode: the deployed model) and with test-batch statistics (batch 256); final KD loss "
             "(nats, the last logged batch); for the fitted noise its spectrum exponent, the correlation between its "
             "colour channels, and the BN-statistics loss on white noise -> on the fitted noise. One row per seed. Measured on "
             + next(iter(runs.values()))["provenance"]["device"] + ".", "",
             "| teacher | recipe and noise | seed | acc, running stats | acc, test-batch stats | final KD loss "
             "| fitted noise |", "|---|---|---:|---|---|---:|---|"]
    for teacher, arm, tlabel, label in NOISE_FIT_ROWS:
        for stem in sorted(k for k in runs if k.startswith(f"{teacher}__{arm}__s")):
            r = runs[stem]
            cell = lambda key: " / ".join(pct(at_samples(r["curve"], n, key)) for n in points)
            fit = ""
            if r.get("noise/fitted"):
                L = np.array(r["noise/fitted"]["color"])
                cov = L @ L.T
                corr = cov / np.sqrt(np.outer(cov.diagonal(), cov.diagonal()))
                off = corr[np.triu_indices(len(L), 1)]
                fit = (f"1/f^{r['noise/fitted']['alpha']:.1f}, colour correlation {off.min():.2f}-{off.max():.2f}; "
                       f"{r['noise/bn_loss_white']:.1f} -> {r['noise/bn_loss_fitted']:.1f}")
            loss = f"{r['train/final_loss']:.2f}"
            if "source" in r:  # the run of the other table: another machine, bf16, and 256k samples
                fit = f"the run of `{r['source']}` (another CPU, bf16; its loss at {r['samples_seen'] // 1000}k)"
            lines.append(f"| {tlabel} | {label} | {r['args']['seed']} | {cell('eval/acc_running')} "
                         f"| {cell('eval/acc_batchstats')} | {loss} | {fit} |")
    lines += ["", "![fitted noise](results/noise_fit.png)"]
    return "\n".join(lines)


def noise_fit_figure(path):
    plt = pyplot()
    runs = noise_fit_runs()
    if not runs:
        return
    last = max(row["samples_seen"] for r in runs.values() if "source" not in r for row in r["curve"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    colors = {"prior_white": "tab:gray", "prior_fit": "tab:blue", "default_white": "tab:orange",
              "default_fit": "tab:red"}
    for teacher, arm, tlabel, label in NOISE_FIT_ROWS:
        for stem in sorted(k for k in runs if k.startswith(f"{teacher}__{arm}__s")):
            r, seed = runs[stem], runs[stem]["args"]["seed"]
            style = dict(color=colors[arm], ls="-" if seed == 0 else "--", label=f"{tlabel}: {label}, seed {seed}")
            curve = [row for row in r["curve"] if row["samples_seen"] <= last]
            x = [row["samples_seen"] / 1000 for row in curve]
            for ax, key in zip(axes, ("eval/acc_running", "eval/acc_batchstats")):
                ax.plot(x, [100 * row[key] for row in curve], marker="o", ms=3, **style)
            if r.get("train_loss_curve"):
                loss = r["train_loss_curve"]
                axes[2].plot([n / 1000 for n, _ in loss], [v for _, v in loss], lw=0.8, **style)
    titles = ("student in eval mode (running statistics)", "test-batch statistics", "KD loss (KL, nats)")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("noise samples seen (thousands)")
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.axhline(10, color="k", lw=0.6, ls=":")  # chance
        ax.set_ylim(0, None)
    save_with_legend(plt, fig, axes[0], path, ncol=2, bottom=0.2)


def calibrate_bn_block():
    path = RESULTS / "calibrate_bn.json"
    if not path.exists():
        return "_Not measured yet: run `python bench/calibrate_bn.py`._"
    r = json.loads(path.read_text())
    lines = [f"`{r['command']}`: each student of the table above from its final checkpoint, CIFAR-10 test accuracy (%) "
             f"in eval mode with its running statistics as trained, after re-estimating them on {r['batches']} batches "
             f"of {r['batch_size']} samples of the noise fitted to its teacher (no image), and with test-batch "
             "statistics.", "",
             "| run | trained on | seed | eval mode, as trained | eval mode, calibrated on fitted noise "
             "| test-batch statistics |", "|---|---|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| `{row['run']}` | {row['trained_on']} | {row['seed']} | {pct(row['acc_running'])} "
                     f"| {pct(row['acc_calibrated'])} | {pct(row['acc_batchstats'])} |")
    return "\n".join(lines)


HEADLINE = [  # (results file, what it is): the README's first table
    ("default_run.json", "`python cs_rejection_bn.py` (the default: fitted noise, CS + rejection)"),
    ("noise_fit/ours20__default_fit__s1.json", "the same, seed 1"),
    ("default_run_white_256k.json", "the same with the paper's white noise (`--no-fit-noise`), twice the budget"),
    ("noise_fit/aka20__prior_fit__s0.json", "prior work's recipe with fitted noise, the shared teacher"),
    ("noise_fit/aka20__prior_fit__s1.json", "the same, seed 1"),
    ("bn_variants/prior_recipe.json", "prior work's recipe, white noise (the paper's), the shared teacher"),
    ("noise_fit/aka20__prior_white__s1.json", "the same, seed 1, 128k samples"),
]


def headline_block():
    lines = ["| run | teacher -> student | noise samples | student, eval mode | student, test-batch statistics "
             "| wall time | hardware |", "|---|---|---:|---:|---:|---:|---|"]
    for name, label in HEADLINE:
        if not (RESULTS / name).exists():
            continue
        r = json.loads((RESULTS / name).read_text())
        a, prov = r["args"], r["provenance"]
        device = prov["device"].split("(", 1)[-1].rsplit(")", 1)[0] if "(" in prov["device"] else prov["device"]
        device = device.replace("cpu,", "CPU (name not recorded),", 1) if device.startswith("cpu,") else device
        wall = f"{prov['wall_time_s'] / 60:.0f} min" if prov.get("wall_time_s") else "n/a"
        lines.append(f"| {label} | {a['teacher']} ({pct(r['teacher/acc'])}%) -> {a['student']} "
                     f"| {r['samples_seen'] // 1000}k | {pct(r['eval/acc_running'])}% | {pct(r['eval/acc_batchstats'])}% "
                     f"| {wall} | {device}{', bf16' if a.get('bf16') else ''} |")
    lines += ["", "Wall time as measured on a shared 2-core machine: tests ran beside some of these runs, so it is an upper "
              "bound; the AMD EPYC has no bf16 and runs fp32, several times slower per step than the Xeon with bf16."]
    return "\n".join(lines)


def default_run_block():
    path = RESULTS / "default_run.json"
    if not path.exists():
        return "_Not measured yet: `python cs_rejection_bn.py`, then copy its results.json to results/default_run.json._"
    r = json.loads(path.read_text())
    return (f"Measured (`python cs_rejection_bn.py --data-dir {r['args']['data_dir']}`, the data read from elsewhere, "
            f"everything else the defaults): with the shipped teacher ({pct(r['teacher/acc'])}%), the student reached {pct(r['eval/acc_running'])}% "
            f"with its running statistics and {pct(r['eval/acc_batchstats'])}% with test-batch statistics (batch "
            f"{r['eval/batch_size']}) after {r['samples_seen']:,} noise samples, in {r['provenance']['wall_time_s'] / 60:.0f} "
            f"minutes on {r['provenance']['device']} (`results/default_run.json`).")


def throughput_block():
    path = RESULTS / "throughput.json"
    if not path.exists():
        return "_No results yet: run `python bench/throughput.py`._"
    r = json.loads(path.read_text())
    return "\n".join([
        f"`python bench/throughput.py`, ResNet-20 -> ResNet-20, batch {r['batch_size']}, median of {r['repeats']} steps, "
        f"on {r['provenance']['device']}:",
        "",
        "| | fp32 | bf16 autocast + channels_last |",
        "|---|---:|---:|",
        f"| KD step (CS teacher forward, student forward + backward, Adam), samples/s "
        f"| {r['kd_step_samples_per_s_fp32']:.0f} | {r['kd_step_samples_per_s_bf16']:.0f} |",
        f"| rejection sampler's own code (timed inside `draw_batch`), share of a KD step "
        f"| {pct(r['sampler_timer_frac_of_step_fp32'])}% | {pct(r['sampler_timer_frac_of_step_bf16'])}% |",
        f"| `draw_batch` reject minus none at equal teacher compute (2 x {r['batch_size']} samples), share of a KD step "
        f"| {pct(r['sampler_overhead_frac_of_step_fp32'])}% | {pct(r['sampler_overhead_frac_of_step_bf16'])}% |",
        "",
        "The second measure is the difference of two medians of a full teacher forward, so its noise is a few percent "
        "of a step; the first times only the sampler's own code. Rejection's real cost is the extra teacher compute "
        "(pools of 2B), visible in the student samples/s column of the table above.",
    ])


def teachers_block():
    manifest = json.loads((REPO / "teachers" / "manifest.json").read_text())
    lines = ["| file | arch / norm | dataset | test acc (fp32, eval mode) | seed | training time | sha256 |",
             "|---|---|---|---:|---:|---:|---|"]
    for name, t in sorted(manifest.items()):
        lines.append(f"| `teachers/{name}` | {t['arch']} / {t['norm']} | {t['dataset']} | {pct(t['test_acc'])}% "
                     f"| {t['seed']} | {t['train_time_s'] / 60:.0f} min | `{t['sha256'][:16]}...` |")
    for name, t in sorted(manifest.items()):
        lines += ["", f"`{name}`: `{t['command']}`" + (f" ({t['note']})" if t.get("note") else "")]
    return "\n".join(lines)


BLOCKS = {"bn_variants": bn_variants_block, "throughput": throughput_block, "teachers": teachers_block,
          "bn_ablation": bn_ablation_block, "default_run": default_run_block, "seeds": seeds_block,
          "batch_align": batch_align_block, "student_study": student_study_block, "vit_account": vit_account_block,
          "vit_failure": vit_failure_block, "noise_fit": noise_fit_block,
          "calibrate_bn": calibrate_bn_block, "headline": headline_block}
FIGURES = {"bn_variants.png": bn_variants_figure, "bn_ablation_*.png": lambda path: bn_ablation_figures(),
           "batch_align.png": batch_align_figure, "vit_failure.png": vit_failure_figure, "noise_fit.png": noise_fit_figure}


def render(readme):
    for name, block in BLOCKS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n)(?:.*?\n)?(<!-- END {name} -->)", re.S)
        if not pattern.search(readme):
            raise ValueError(f"README.md has no generated block '{name}'")
        readme = pattern.sub(lambda m: m.group(1) + block() + "\n" + m.group(2), readme)
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
