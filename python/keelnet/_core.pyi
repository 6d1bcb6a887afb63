# Typed stubs for the Rust extension keelnet._core, checked by `nox -s typing` (stubtest).

__version__: str
