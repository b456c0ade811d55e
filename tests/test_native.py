"""The compiled extension module: there, release-built, and agreeing with the package metadata."""

import importlib.metadata
from pathlib import Path

import mimir_fast
from mimir_fast import _native


def test_native_version_matches_package_metadata():
    assert _native.__version__ == importlib.metadata.version("mimir-fast") == mimir_fast.__version__


def test_native_is_a_release_build():
    assert _native.build_profile() == "release"
    info = _native.build_info()
    assert info["profile"] == "release" and info["debug_assertions"] is False
    assert info["version"] == _native.__version__


def test_stubs_and_typing_marker_ship_with_the_package():
    package = Path(mimir_fast.__file__).parent
    assert (package / "py.typed").is_file()
    stub = (package / "_native.pyi").read_text()
    for name in ("__version__", "build_profile", "build_info"):
        assert name in stub
