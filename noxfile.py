"""keelnet's sessions: the same commands locally and in CI.

nox -s tests     everything CI runs: cargo test + the Python suites (root ones included)
nox -s demo      build keelnet and run `keelnet demo`
nox -s lint      ruff, cargo fmt --check, cargo clippy -D warnings
nox -s typing    mypy on the package, stubtest on keelnet._core
nox -s bench     criterion + pytest-benchmark (not in CI)
nox -s fuzz      a short cargo-fuzz run of every target
nox -s build     wheels for every Linux + an sdist, checked, installed and run
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


def system_deps(session: nox.Session, purpose: str) -> None:
    """Install the OS packages for `purpose` (runtime, test, bench), if missing."""
    session.run("bash", str(ROOT / "scripts" / "system-deps"), purpose, external=True)


def install(session: nox.Session, *groups: str) -> None:
    """Build keelnet from this checkout (release profile) into the session's venv."""
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))
    session.install("maturin>=1.16,<2")
    # With the etcd extra: the overlay suites, the demo and mypy need etcd3gw.
    session.run("maturin", "develop", "--release", "--quiet", "--extras", "etcd", silent=True)


@nox.session
def tests(session: nox.Session) -> None:
    system_deps(session, "test")
    session.run("cargo", "test", "--locked", "-p", "keelnet-core", external=True)
    install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    system_deps(session, "demo")
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
    system_deps(session, "bench")
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


#: Wheels `nox -s build` makes: (Rust target, platform tag). manylinux2014 is glibc 2.17:
#: RHEL/CentOS 7+, Debian 9+, Ubuntu 16.04+, Amazon Linux 2; musllinux_1_2 is Alpine 3.13+.
#: zig links against those C libraries' oldest symbols from this machine.
WHEEL_TARGETS = (
    ("x86_64-unknown-linux-gnu", "manylinux2014"),
    ("aarch64-unknown-linux-gnu", "manylinux2014"),
    ("x86_64-unknown-linux-musl", "musllinux_1_2"),
)


@nox.session
def build(session: nox.Session) -> None:
    """abi3 wheels for every Linux above and an sdist; both installed and run here."""
    session.install("maturin>=1.16,<2", "ziglang", "auditwheel", "twine")
    dist = ROOT / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    targets = [target for target, _ in WHEEL_TARGETS]
    session.run("rustup", "target", "add", *targets, external=True)
    for target, platform in WHEEL_TARGETS:
        session.run(
            "maturin", "build", "--release", "--zig", "--target", target,
            "--compatibility", platform, "--out", str(dist),
        )  # fmt: skip
    session.run("maturin", "sdist", "--out", str(dist))
    session.run("twine", "check", "--strict", *(str(p) for p in sorted(dist.iterdir())))
    for wheel in sorted(dist.glob("*manylinux*.whl")):
        # auditwheel reads the symbol versions the library really needs.
        report = session.run("auditwheel", "show", str(wheel), silent=True) or ""
        if "manylinux_2_17" not in str(report):
            session.error(f"{wheel.name} needs a newer glibc than 2.17:\n{report}")
    for wheel in sorted(dist.glob("*musllinux*.whl")):
        # No musl Python here to run it: check it asks for nothing beyond musl's libc.
        session.run("python", str(ROOT / "scripts" / "check-musl-wheel"), str(wheel))
    native = next(dist.glob("*manylinux*x86_64.whl"))
    sdist = next(dist.glob("*.tar.gz"))
    for what in (native, sdist):  # each into a fresh venv, as a user would
        venv = pathlib.Path(session.create_tmp()) / f"venv-{what.suffix.lstrip('.')}"
        shutil.rmtree(venv, ignore_errors=True)
        session.run("python", "-m", "venv", str(venv))
        session.run(str(venv / "bin" / "pip"), "install", "-q", str(what), external=True)
        session.run(str(venv / "bin" / "keelnet"), "--version", external=True)
        session.run(
            str(venv / "bin" / "python"), "-c",
            "import keelnet.ipam; print(keelnet.ipam.AddressPool('10.0.0.0/29').allocate())",
            external=True,
        )  # fmt: skip
