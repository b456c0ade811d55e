"""Type stubs for the Rust extension module ``mimir_fast._native``."""

__version__: str

def build_profile() -> str:
    """``"release"`` or ``"debug"``: the Cargo profile the module was compiled with."""

def build_info() -> dict[str, str | bool]:
    """Version, profile, target architecture and OS, and whether debug assertions are on."""
