"""keelnet's sessions: the same commands locally and in CI.

nox -s tests     everything CI runs: cargo test + the Python suites (root ones included)
nox -s demo      build keelnet and run `keelnet demo`
nox -s lint      ruff, cargo fmt --check, cargo clippy -D warnings
nox -s typing    mypy on the package, stubtest on keelnet._core
nox -s bench     criterion + pytest-benchmark (not in CI)
nox -s fuzz      a short cargo-fuzz run of every target
nox -s build     build the wheel and check it installs and imports
"""

from __future__ import annotations

import os
import pathlib
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

ROOT = pathlib.Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")


def system_deps(session: nox.Session) -> None:
    """Install the OS packages the suites drive (iproute2, nftables, ...), if missing."""
    session.run("bash", str(ROOT / "scripts" / "system-deps"), external=True)


def install(session: nox.Session, *groups: str) -> None:
    """Build keelnet from this checkout (release profile) into the session's venv."""
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))
    session.install("maturin>=1.16,<2")
    session.run("maturin", "develop", "--release", "--quiet", silent=True)


@nox.session
def tests(session: nox.Session) -> None:
    system_deps(session)
    session.run("cargo", "test", "--locked", "-p", "keelnet-core", external=True)
    install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    system_deps(session)
    install(session)
    session.run("keelnet", "demo", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("cargo", "fmt", "--all", "--check", external=True)
    session.run(
        "cargo",
        "clippy",
        "--locked",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
        external=True,
    )


@nox.session
def typing(session: nox.Session) -> None:
    install(session, "typing")
    session.run("mypy")
    session.run(
        "python", "-m", "mypy.stubtest", "keelnet._core", "--allowlist", "stubtest-allowlist.txt"
    )


@nox.session
def bench(session: nox.Session) -> None:
    system_deps(session)
    session.run("cargo", "bench", "--locked", "-p", "keelnet-core", *session.posargs, external=True)
    install(session, "test")
    session.run(
        "pytest",
        "benches",
        "--benchmark-enable",
        "--benchmark-only",
        "--benchmark-columns=min,median,mean,ops",
        "-p",
        "no:randomly",
    )


@nox.session
def fuzz(session: nox.Session) -> None:
    """Each cargo-fuzz target for a short while (FUZZ_SECONDS, default 20)."""
    fuzz_dir = ROOT / "rust" / "fuzz"
    if not (fuzz_dir / "Cargo.toml").exists():
        session.skip("no fuzz targets yet")
    if shutil.which("cargo-fuzz") is None:
        session.run("cargo", "install", "--locked", "cargo-fuzz", external=True)
    seconds = os.environ.get("FUZZ_SECONDS", "20")
    # cargo-fuzz needs nightly flags; the machine has one stable toolchain.
    env = {"RUSTC_BOOTSTRAP": "1"}
    targets = session.run(
        "cargo", "fuzz", "list", "--fuzz-dir", str(fuzz_dir), external=True, silent=True, env=env
    )
    for target in str(targets).split():
        # New inputs go to corpus/<target> (ignored by git); the run starts from the real
        # frames committed in seeds/<target>.
        corpus = fuzz_dir / "corpus" / target
        corpus.mkdir(parents=True, exist_ok=True)
        seeds = [str(path) for path in [fuzz_dir / "seeds" / target] if path.is_dir()]
        session.run(
            "cargo",
            "fuzz",
            "run",
            "--fuzz-dir",
            str(fuzz_dir),
            target,
            str(corpus),
            *seeds,
            "--",
            f"-max_total_time={seconds}",
            external=True,
            env=env,
        )


@nox.session
def build(session: nox.Session) -> None:
    session.install("maturin>=1.16,<2", "twine")
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("maturin", "build", "--release", "--out", str(dist))
    wheels = sorted(str(p) for p in dist.glob("*.whl"))
    session.run("twine", "check", "--strict", *wheels)
    session.install("--force-reinstall", *wheels)
    session.run("keelnet", "--version")
    session.run("python", "-c", "import keelnet, keelnet.ipam; print(keelnet.__version__)")
