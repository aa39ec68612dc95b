"""Building and running limner's Containerfile with podman on these machines, as a test set-up.

What these machines need, kept here and not in the Containerfile (which builds unchanged with docker or
podman wherever a registry is reachable):

- podman runs with `--runtime runc` and `default_ulimits = []` (a containers.conf of our own);
- no registry is reachable, so the base image `debian:bookworm-slim` is made with debootstrap from
  Debian's archive and imported under that name (the tarball is cached between runs on one machine);
- pip inside the build needs this machine's pip configuration (its CA bundle, index and wheel
  folders): a pip.conf made from `pip config list` and the folders it names are mounted for RUN steps;
- `--format docker` keeps the HEALTHCHECK (the OCI format has none).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BASE = "docker.io/library/debian:bookworm-slim"
#: The sketch image the tests build and run.
TAG = "localhost/limner:ci"
CACHE = Path(os.environ.get("LIMNER_CI_CACHE", Path.home() / ".cache" / "limner-ci"))
MIRROR = "http://deb.debian.org/debian"


class Podman:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        conf = workdir / "containers.conf"
        conf.write_text('[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        done = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args[:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        return str(done.stdout)

    def logs(self, name: str) -> str:
        """The container's output, both streams in order."""
        done = subprocess.run(
            ["podman", "logs", name],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return done.stdout

    def ok(self, *args: str, timeout: float = 60) -> bool:
        """Whether the command succeeds (`healthcheck run`: exit 0 is healthy)."""
        return (
            subprocess.run(["podman", *args], env=self.env, capture_output=True, timeout=timeout).returncode
            == 0
        )

    def usable(self) -> str | None:
        """None when podman can run a container here, else why not."""
        if shutil.which("podman") is None:
            return "podman is not installed (apt-get install podman runc)"
        try:
            self("info", timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return f"podman cannot run here: {str(exc).splitlines()[-1]}"
        return None

    def base_image(self) -> float:
        """Import the base image unless it is there; return the seconds it took (0 when cached)."""
        with _one_at_a_time():
            return self._base_image()

    def _base_image(self) -> float:
        if self.ok("image", "exists", BASE):
            return 0.0
        started = time.monotonic()
        tarball = CACHE / "debian-bookworm-minbase.tar"
        if not tarball.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            rootfs = Path(tempfile.mkdtemp(prefix="limner-rootfs-"))
            try:
                subprocess.run(
                    ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR],
                    check=True,
                    capture_output=True,
                    timeout=900,
                )
                partial = tarball.with_suffix(".partial")
                subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600)
                partial.rename(tarball)
            finally:
                shutil.rmtree(rootfs, ignore_errors=True)
        self("import", "--change", 'CMD ["bash"]', str(tarball), BASE, timeout=600)
        return time.monotonic() - started

    def build(self, context: Path, tag: str, *build_args: str) -> float:
        with _one_at_a_time():
            return self._build(context, tag, *build_args)

    def _build(self, context: Path, tag: str, *build_args: str) -> float:
        started = time.monotonic()
        mounts = []
        for source, target in pip_mounts(self.workdir):
            mounts += ["--volume", f"{source}:{target}:ro"]
        self(
            "build",
            "--format",
            "docker",
            "--network",
            "host",
            "-f",
            str(context / "Containerfile"),
            "-t",
            tag,
            *mounts,
            *[arg for value in build_args for arg in ("--build-arg", value)],
            str(context),
            timeout=1200,
        )
        return time.monotonic() - started


@contextlib.contextmanager
def _one_at_a_time() -> Iterator[None]:
    """One base import or build at a time on this machine: CI's prebuild and the test share a lock."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def pip_mounts(workdir: Path) -> list[tuple[str, str]]:
    """This machine's pip configuration for RUN steps: a pip.conf of its settings (the CA bundle under a
    path of its own, since the image's /etc/ssl/certs is its own) and the local folders it names."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    settings: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        settings[name] = value.strip().strip("'\"")
    mounts: list[tuple[str, str]] = []
    if "cert" in settings and Path(settings["cert"]).exists():
        mounts.append((settings["cert"], "/run/limner-build/ca.crt"))
        settings["cert"] = "/run/limner-build/ca.crt"
    for name in ("find-links", "extra-index-url", "index-url", "constraint"):
        for value in settings.get(name, "").split():
            path = Path(value.removeprefix("file://"))
            if path.is_absolute() and path.exists():
                folder = path if path.is_dir() else path.parent
                if name.endswith("index-url"):  # a local index's pages link to files beside `simple/`
                    folder = path.parent
                if (str(folder), str(folder)) not in mounts:
                    mounts.append((str(folder), str(folder)))
    conf = workdir / "pip.conf"
    conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items() if v))
    mounts.append((str(conf), "/etc/pip.conf"))
    return mounts


def prebuild(root: Path) -> None:
    """Build the sketch image ahead of the tests (`.ci/run` does, while pip installs): the test then
    finds every layer cached. Prints why not where podman cannot run."""
    podman = Podman(Path(tempfile.mkdtemp(prefix="limner-podman-")))
    why = podman.usable()
    if why is not None:
        print(f"image prebuild skipped: {why}")
        return
    base = podman.base_image()
    built = podman.build(root, TAG, "EXTRAS=")
    print(f"image prebuilt: base in {base:.1f} s, build in {built:.1f} s")


if __name__ == "__main__":
    prebuild(Path(__file__).resolve().parents[2])
