"""``benchmarks/device_check.sh`` in its CPU dry mode: the GPU script's logic, tested without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import rows

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


@pytest.fixture
def fake_tests(tmp_path):
    """A stand-in test folder with one GPU-marked test (skips without CUDA) and one unmarked test."""
    d = tmp_path / "fake_tests"
    d.mkdir()
    (d / "conftest.py").write_text(
        "def pytest_configure(config):\n    config.addinivalue_line('markers', 'gpu: needs a CUDA device')\n"
    )
    (d / "test_fake.py").write_text(
        "import pytest, torch\n"
        "@pytest.mark.gpu\n"
        "@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA')\n"
        "def test_on_gpu():\n    assert torch.ones(1, device='cuda').item() == 1\n"
        "def test_not_selected():\n    raise AssertionError('-m gpu must deselect this')\n"
    )
    return d


def _run(args, env, timeout):
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHON=sys.executable, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_device_check_dry_run(tmp_path, fake_tests):
    out = tmp_path / "results"
    proc = _run([str(out)], dict(TESTS=str(fake_tests), DRY_RUN="1", TOTAL_S="400"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    head = proc.stdout[: proc.stdout.index("== env")]
    assert "stage limits" in head  # the plan is printed before anything runs
    tail = proc.stdout[proc.stdout.index("device_check summary") :]
    for stage in ("env", "install", "backends", "tests", "bench", "sanitize"):
        assert stage in tail
    assert "SKIPPED" in tail and "dry run" in tail  # no install on the CPU
    assert "| SGD fused | torch |" in tail  # the table is printed last
    log = (out / "device_check.log").read_text()
    assert "CUDA_HOME=" in log and "torch " in log  # the toolchain is printed first
    assert "== tests (limit " in log and "== sanitize (limit " in log
    assert "1 skipped" in log  # the GPU-marked test ran and skipped
    assert "reference torch.float32   view[1:]" in log and " 0 failures" in log  # the sanitizer's logic on CPU
    for name in ("device_check.log", "summary.txt", "table.md", "results.csv", "results.json", "train.csv"):
        assert (out / name).is_file(), name
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back from $OUT
    data = json.loads((out / "results.json").read_text())
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    assert {r["optimizer"] for r in ok} >= {"SGD fused", "SGD foreach", "SAM loop (davda54)", "SANER loop (paper)"}
    assert any(r["optimizer"].startswith("SANER a=") for r in ok)
    for r in ok:
        assert r["ms"] > 0 and r["gbs"] > 0 and r["vs_sgd_fused"] > 0 and r["n_timed"] >= 3
        variant = next((v for v in rows.VARIANT_BYTES if r["optimizer"].endswith(f" {v}")), None)
        floor = rows.VARIANT_BYTES[variant] if variant else (24 if r["optimizer"].startswith("SGD") else 48)
        if "AdamW" in r["optimizer"]:  # against fused AdamW (rows.py)
            floor = rows.SANER_ADAMW_BYTES if r["optimizer"].startswith("SANER") else rows.ADAMW_BYTES
        assert r["bytes_per_elem"] == floor, r["optimizer"]
        assert r["extra_bytes_per_param"] is None or r["extra_bytes_per_param"] >= 0
    (headline,) = data["headline"]
    assert headline["label"] == "train-loop step incl. zero_grad" and headline["floor_ratio"] == 2.0
    assert headline["n_pairs"] >= 9 and headline["ratio"] > 0
    assert "train-loop step incl. zero_grad" in (out / "table.md").read_text()
    assert data["meta"]["probe"]["best_gbs"] > 0
    assert data["train"] and all(r["status"] == "ok" for r in data["train"])


def test_device_check_reports_a_failing_stage(tmp_path, fake_tests):
    (fake_tests / "test_broken.py").write_text(
        "import pytest\n@pytest.mark.gpu\ndef test_broken():\n    assert False\n"
    )
    out = tmp_path / "results"
    proc = _run(
        ["--dry-run", str(out)], dict(TESTS=str(fake_tests), BENCH_ARGS="--no-train --rows 'SGD fused'"), timeout=300
    )
    assert proc.returncode == 1
    summary = (out / "summary.txt").read_text()
    assert "tests      FAILED" in summary and "bench      ok" in summary
