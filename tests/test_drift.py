"""The method scripts duplicate their boilerplate on purpose (one file, one method); this keeps the copies in step:
a flag that two scripts share means the same thing, with the same default and help, unless listed here as meant."""
import argparse
import ast
import importlib
import inspect
import itertools

import pytest

from conftest import REPO

METHOD_SCRIPTS = ["cs_rejection_bn", "bn_ablation", "batch_align_ln_gn"]
# Flags whose meaning or default differs between scripts by design, and why.
MEANT_TO_DIFFER = {
    "--steps": "a whole run vs one distilled point of a sweep",
    "--batch-size": "the student's batch vs the teacher's CS batch of the diagnostics",
    "--lr": "the ablation fixes the schedule and names it in the help",
    "--seed": "the ablation reuses the seed for every point",
    "--resume": "a run resumes from its checkpoint, a sweep from its finished points",
    "--eval-batch-size": "the ablation's teacher uses it too",
    "--teacher-ckpt": "the default file name carries the teacher's norm (bn for the BatchNorm scripts)",
    "--probe-samples": "noise samples of a diagnostic, not of training: each study sets its own count",
    "--eval-every": "steps of different default batches (32 and 256): both evaluate every 32k samples",
    "--ckpt-every": "steps of different default batches (32 and 256): both save every 25.6k samples",
    "--feature-weight": "our default where it won on two seeds (CS teachers); a study arm for aligned teachers",
}


class Captured(Exception):
    """Raised by flags_of's spy once the script's parser is built: nothing after parsing runs (checks of files)."""


def flags_of(module_name, monkeypatch):
    """{flag: (default, help)} of a script's parser, captured as parse_args([]) builds it."""
    captured = {}

    def spy(self, args=None, namespace=None):
        captured["parser"] = self
        raise Captured
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    with pytest.raises(Captured):
        importlib.import_module(module_name).parse_args([])
    monkeypatch.undo()
    return {a.option_strings[0]: (a.default, a.help) for a in captured["parser"]._actions if a.dest != "help"}


@pytest.mark.parametrize("a,b", list(itertools.combinations(METHOD_SCRIPTS, 2)))
def test_shared_flags_mean_the_same_in_every_script(a, b, monkeypatch):
    fa, fb = flags_of(a, monkeypatch), flags_of(b, monkeypatch)
    shared = (set(fa) & set(fb)) - set(MEANT_TO_DIFFER)
    assert {"--teacher", "--dataset", "--data-dir", "--device", "--bf16"} <= shared
    drift = {f: (fa[f], fb[f]) for f in sorted(shared) if fa[f] != fb[f]}
    assert not drift, f"{a} and {b} disagree on {drift}"


@pytest.mark.parametrize("script", METHOD_SCRIPTS + ["vit_failure_analysis", "train_teacher"])
def test_every_flag_of_every_script_says_what_it_does(script, monkeypatch):
    missing = [flag for flag, (_, text) in flags_of(script, monkeypatch).items() if not (text or "").strip()]
    assert not missing, f"{script}.py: flags without a help string: {missing}"


@pytest.mark.parametrize("script", METHOD_SCRIPTS + ["vit_failure_analysis"])
def test_every_method_script_seeds_in_one_visible_block(script):
    source = (REPO / f"{script}.py").read_text()
    assert "random.seed(args.seed)\n    np.random.seed(args.seed)\n    torch.manual_seed(args.seed)\n" in source


def test_no_file_refers_to_design_notes_outside_the_repository():
    """The project carries its own docs (README): no pointer to design notes that only this team has."""
    tracked = [p for p in REPO.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".txt", ".ini", ".json")
               and not {"runs", ".git", "data"} & set(p.relative_to(REPO).parts)]
    needles = ("shared/" + "docs", "methods" + ".md")  # split, so that this file does not name them
    offenders = [str(p.relative_to(REPO)) for p in tracked if any(n in p.read_text(errors="ignore") for n in needles)]
    assert not offenders, offenders


# Method code two scripts need: each carries its own copy (so that it can be copied alone with common.py), and the
# copies must stay identical to the original.
COPIES = [("cs_rejection_bn", "batch_align_ln_gn",
           ["RejectionSampler", "draw_batch", "new_stats", "_record_raw", "kd_loss", "noise_summary", "stages",
            "stage_outputs", "stage_shapes", "feature_loss"]),
          ("cs_rejection_bn", "vit_failure_analysis", ["current_statistics", "global_batch_norm"]),
          ("batch_align_ln_gn", "vit_failure_analysis", ["per_sample_norms", "align", "batch_aligned",
                                                         "PER_SAMPLE_NORMS", "ALIGN_EPS"])]


@pytest.mark.parametrize("original,copy,names", COPIES)
def test_copied_method_code_is_identical_to_the_original(original, copy, names):
    a, b = importlib.import_module(original), importlib.import_module(copy)
    for name in names:
        x, y = getattr(a, name), getattr(b, name)
        if callable(x) and not isinstance(x, tuple):
            assert inspect.getsource(x) == inspect.getsource(y), f"{copy}.{name} drifted from {original}.{name}"
        else:
            assert x == y, f"{copy}.{name} drifted from {original}.{name}"


@pytest.mark.parametrize("script", METHOD_SCRIPTS + ["vit_failure_analysis", "train_teacher"])
def test_no_script_imports_another(script):
    siblings = {p.stem for p in REPO.glob("*.py")} - {"common", script}
    tree = ast.parse((REPO / f"{script}.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & siblings, f"{script}.py imports {imported & siblings}"


def test_the_training_loops_bookkeeping_is_the_same_in_both_distilling_scripts():
    """log_train (nested in main: it reads the loop's state) is copied between the two distilling scripts."""
    def nested(script, name):
        tree = ast.parse((REPO / f"{script}.py").read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        return ast.dump(next(n for n in main.body if isinstance(n, ast.FunctionDef) and n.name == name))
    for name in ("log_train", "evaluation"):
        assert nested("cs_rejection_bn", name) == nested("batch_align_ln_gn", name), name


@pytest.mark.parametrize("script", METHOD_SCRIPTS)
def test_the_default_student_is_the_prior_works_pair_for_a_resnet34_teacher(script):
    parse = importlib.import_module(script).parse_args
    assert parse(["--teacher", "resnet34"]).student == "resnet18" and parse([]).student == "resnet20"
    assert parse(["--teacher", "resnet34", "--student", "resnet20"]).student == "resnet20"
