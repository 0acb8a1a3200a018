"""The benchmark scripts' own logic on tiny settings (the measurements themselves live in results/)."""
import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import gpu_speed  # noqa: E402


def test_gpu_speed_times_both_paths_and_names_the_device(tmp_path):
    out = gpu_speed.main(["--device", "cpu", "--teacher", "resnet20", "--student", "resnet20", "--batch-size", "8",
                          "--steps", "2", "--warmup", "1", "--out", str(tmp_path / "speed.json")])
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert saved["samples_per_s_fp32_eager"] > 0 and saved["samples_per_s_fast"] > 0
    assert saved["speedup"] == out["speedup"] and "cpu (" in saved["provenance"]["device"]
