"""The README's result tables are generated from results/*.json; they must agree, and every run they show must be
complete and say where it came from."""
import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import report  # noqa: E402


def test_readme_tables_match_the_committed_results():
    readme = (REPO / "README.md").read_text()
    assert report.render(readme) == readme, "README.md is out of date: run python bench/report.py"


def test_the_table_shows_every_variant_once_any_has_run():
    done = {p.stem for p in (REPO / "results" / "bn_variants").glob("*.json")}
    if done:
        assert done == {stem for stem, _ in report.BN_VARIANTS}


def test_every_committed_result_has_metrics_curve_and_provenance():
    files = sorted((REPO / "results" / "bn_variants").glob("*.json"))
    for path in files:
        r = json.loads(path.read_text())
        for key in ("teacher/acc", "eval/acc_running", "eval/acc_batchstats", "noise/label_entropy",
                    "noise/accepted_label_entropy", "samples_seen", "samples_per_s", "args", "provenance"):
            assert key in r, f"{path}: no {key}"
        assert r["curve"][-1]["samples_seen"] == r["samples_seen"] == r["args"]["steps"] * r["args"]["batch_size"]
        assert r["provenance"]["git_commit"] != "unknown", path

