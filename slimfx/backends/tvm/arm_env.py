"""Set up (once) the environment that runs aarch64 TVM modules on an x86 host.

``make arm-env`` calls :func:`main`. The steps, each skipped when its result is
already there, are:

1. ``apt-get install`` the aarch64 cross compiler, ``qemu-user-static`` and
   ``debootstrap`` (after ``apt-get update``; needs root);
2. a minimal Debian bookworm arm64 root file system with ``python3.11``, made
   with ``debootstrap --foreign`` and unpacked with ``dpkg-deb -x`` (no chroot,
   so no binfmt registration is needed);
3. the aarch64 TVM runtime wheels, installed from the x86 side with
   ``pip --platform`` into ``ROOT/opt/pyarm``.

A stamp file in the environment directory marks completion: a second run that
finds it does nothing. The directory is ``$SLIMFX_ARM_ENV`` or
``~/.cache/slimfx/arm-env``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slimfx.errors import DeviceError

__all__ = [
    "ArmEnv",
    "ArmEnvError",
    "APT_PACKAGES",
    "ARM_WHEELS",
    "CROSS_CC",
    "default_env_dir",
    "find_env",
    "ensure_env",
    "main",
]

logger = logging.getLogger(__name__)

APT_PACKAGES = ("gcc-aarch64-linux-gnu", "g++-aarch64-linux-gnu", "qemu-user-static", "debootstrap")
ARM_WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0", "numpy", "ml_dtypes")
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64-static"
DEBIAN_SUITE = "bookworm"
PYTHON = "usr/bin/python3.11"
# Bump when the recipe changes so existing environments are rebuilt.
STAMP_NAME = ".slimfx-arm-env-v1"
_STAMP_TEXT = "\n".join(("suite=" + DEBIAN_SUITE, *ARM_WHEELS)) + "\n"


class ArmEnvError(DeviceError):
    """The aarch64 qemu environment is missing or could not be set up."""


@dataclass(frozen=True)
class ArmEnv:
    """A finished aarch64 environment.

    Attributes:
        dir: The environment directory (holds the stamp and ``rootfs``).
        qemu: Absolute path of ``qemu-aarch64-static``.
        cross_cc: Absolute path of ``aarch64-linux-gnu-gcc``.
    """

    dir: Path
    qemu: str
    cross_cc: str

    @property
    def rootfs(self) -> Path:
        """The arm64 root file system given to qemu as ``-L``."""
        return self.dir / "rootfs"

    @property
    def pyarm(self) -> Path:
        """Where the aarch64 Python packages (TVM runtime, numpy) live."""
        return self.rootfs / "opt" / "pyarm"

    @property
    def python(self) -> Path:
        """The aarch64 Python interpreter inside the root file system."""
        return self.rootfs / PYTHON

    def command(self, script: Path, *args: str) -> list[str]:
        """The argv that runs ``script`` with the aarch64 Python under qemu."""
        return [self.qemu, "-L", str(self.rootfs), str(self.python), str(script), *args]

    def environ(self) -> dict[str, str]:
        """Environment variables for :meth:`command` (host ones minus Python's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PYTHONPATH"] = str(self.pyarm)
        env["PYTHONNOUSERSITE"] = "1"
        return env


def default_env_dir() -> Path:
    """``$SLIMFX_ARM_ENV`` or ``~/.cache/slimfx/arm-env``."""
    override = os.environ.get("SLIMFX_ARM_ENV")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "slimfx" / "arm-env"


def find_env(env_dir: Path | None = None) -> ArmEnv | None:
    """Return the finished environment, or ``None`` when it is not (fully) there."""
    env_dir = default_env_dir() if env_dir is None else Path(env_dir)
    stamp = env_dir / STAMP_NAME
    qemu, cc = shutil.which(QEMU), shutil.which(CROSS_CC)
    if qemu is None or cc is None or not stamp.is_file():
        return None
    if stamp.read_text() != _STAMP_TEXT:
        return None
    env = ArmEnv(env_dir, qemu, cc)
    if not env.python.exists() or not (env.pyarm / "tvm").is_dir():
        return None
    return env


def missing_reason(env_dir: Path | None = None) -> str:
    """Say why :func:`find_env` finds nothing, for skip messages and errors."""
    env_dir = default_env_dir() if env_dir is None else Path(env_dir)
    missing = [t for t in (QEMU, CROSS_CC) if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not on PATH"
    if not (env_dir / STAMP_NAME).is_file():
        return f"no finished aarch64 environment in {env_dir}"
    return f"the aarch64 environment in {env_dir} is stale or incomplete"


def _run(argv: Sequence[str], what: str, *, quiet: bool = False) -> None:
    logger.log(logging.DEBUG if quiet else logging.INFO, "arm-env: %s", " ".join(argv))
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except OSError as e:
        raise ArmEnvError(f"arm-env: cannot {what}: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise ArmEnvError(
            f"arm-env: failed to {what} (exit {proc.returncode}). Command: {' '.join(argv)}\n"
            f"{tail}\nFix the cause above and run `make arm-env` again."
        )


def _install_apt_packages() -> None:
    if all(shutil.which(t) for t in (QEMU, CROSS_CC, "aarch64-linux-gnu-g++", "debootstrap")):
        logger.info("arm-env: cross compiler, qemu and debootstrap already installed")
        return
    if shutil.which("apt-get") is None:
        raise ArmEnvError(
            "arm-env: apt-get not found; install " + " ".join(APT_PACKAGES) + " by hand."
        )
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    _run([*sudo, "apt-get", "update", "-q"], "run apt-get update")
    _run([*sudo, *env_prefix, "apt-get", "install", "-y", "-q", *APT_PACKAGES],
         "install the cross compiler and qemu")


def _make_rootfs(rootfs: Path) -> None:
    if (rootfs / PYTHON).exists():
        logger.info("arm-env: arm64 root file system already in %s", rootfs)
        return
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    _run([debootstrap, "--foreign", "--arch=arm64", "--variant=minbase",
          "--include=python3.11,libstdc++6", DEBIAN_SUITE, str(rootfs)],
         "download the arm64 root file system with debootstrap")
    debs = sorted((rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"))
    if not debs:
        raise ArmEnvError(f"arm-env: debootstrap left no packages in {rootfs}")
    logger.info("arm-env: unpacking %d packages into %s", len(debs), rootfs)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(rootfs)], f"unpack {deb.name}", quiet=True)
    for deb in debs:  # 100+ MB of archives nobody needs once unpacked
        deb.unlink()
    if not (rootfs / PYTHON).exists():
        raise ArmEnvError(f"arm-env: {PYTHON} missing from {rootfs} after unpacking")


def _install_wheels(pyarm: Path) -> None:
    if (pyarm / "tvm").is_dir() and (pyarm / "numpy").is_dir():
        logger.info("arm-env: aarch64 wheels already in %s", pyarm)
        return
    pyarm.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "install", "-q", "--upgrade",
          "--platform", "manylinux_2_28_aarch64", "--only-binary=:all:",
          "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
          "--target", str(pyarm), *ARM_WHEELS],
         "install the aarch64 TVM runtime wheels")


def ensure_env(env_dir: Path | None = None) -> ArmEnv:
    """Set up the environment if needed and return it.

    Args:
        env_dir: Environment directory; default :func:`default_env_dir`.

    Returns:
        The finished environment.

    Raises:
        ArmEnvError: A step failed; the message holds the command and its output.
    """
    env_dir = default_env_dir() if env_dir is None else Path(env_dir)
    found = find_env(env_dir)
    if found is not None:
        logger.info("arm-env: ready in %s (stamp found, nothing to do)", env_dir)
        return found
    stamp = env_dir / STAMP_NAME
    stamp.unlink(missing_ok=True)
    _install_apt_packages()
    env = ArmEnv(env_dir, shutil.which(QEMU) or QEMU, shutil.which(CROSS_CC) or CROSS_CC)
    _make_rootfs(env.rootfs)
    _install_wheels(env.pyarm)
    stamp.write_text(_STAMP_TEXT)
    logger.info("arm-env: ready in %s", env_dir)
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: ``python -m slimfx.backends.tvm.arm_env``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help="environment directory (default $SLIMFX_ARM_ENV or "
                             "~/.cache/slimfx/arm-env)")
    parser.add_argument("--print-dir", action="store_true",
                        help="print the directory of the finished environment and exit 0, "
                             "or exit 1 when it is not set up")
    args = parser.parse_args(argv)
    if args.print_dir:
        env = find_env(args.dir)
        if env is None:
            return 1
        sys.stdout.write(f"{env.dir}\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ensure_env(args.dir)
    except ArmEnvError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
