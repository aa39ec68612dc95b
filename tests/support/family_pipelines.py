"""Tiny random-weight pipelines of today's diffusion families, built offline for the tests.

The builders are the project's shared ones, ../shared/examples/families/build_*.py beside the
repository (its README says what each builds; LIMNER_FAMILY_BUILDERS names another folder). `build_all` runs them in parallel subprocesses (one
per family; each takes a few seconds on 2 cores) into a cache folder keyed by the scripts' contents
and the installed diffusers and transformers, so a second test session on the same machine reuses
them. A FLUX.1 Kontext checkpoint is made from the FLUX.1 one (same components, the Kontext class).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

HERE = Path(
    os.environ.get("LIMNER_FAMILY_BUILDERS")
    or Path(__file__).resolve().parents[3] / "shared" / "examples" / "families"
)

#: family -> (builder script, its extra arguments)
BUILDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "flux": ("build_flux.py", ()),
    "flux-schnell": ("build_flux.py", ("--schnell",)),
    "sd3": ("build_sd3.py", ()),
    "qwen-image": ("build_qwenimage.py", ()),
    "z-image": ("build_zimage.py", ()),
    "flux2-klein": ("build_flux2_klein.py", ()),
    "flux2-klein-base": ("build_flux2_klein.py", ("--base",)),
    "sana": ("build_sana.py", ()),
}
#: Qwen-Image-Edit-Plus's and Qwen-Image 2.1's processors need torchvision (transformers 5 builds them
#: with a video processor), which CI must not install; they are built where it is importable.
TORCHVISION = importlib.util.find_spec("torchvision") is not None
if TORCHVISION:
    BUILDS["qwen-image-edit-plus"] = ("build_qwenimage.py", ("--edit-plus",))
    # Qwen-Image 2.1 (real alpha): limner's own builder, in the same manner, with the shared helpers.
    BUILDS["qwen-image-2.1"] = (str(Path(__file__).with_name("build_qwenimage21.py")), (str(HERE),))


def _key() -> str:
    digest = hashlib.sha256()
    for path in [*sorted(HERE.glob("*.py")), Path(__file__).with_name("build_qwenimage21.py")]:
        digest.update(path.read_bytes())
    for package in ("diffusers", "transformers", "torch", "tokenizers"):
        digest.update(version(package).encode())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("LIMNER_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "limner-tests"
    )
    return Path(base) / f"families-{_key()}"


def build_all(root: Path | None = None) -> dict[str, Path]:
    """Every family's folder, built where missing (in parallel), plus the siblings made from them."""
    if not (HERE / "tiny_common.py").is_file():
        raise FileNotFoundError(f"the family builders are not at {HERE} (../shared beside the repository)")
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    # One builder at a time (two test sessions on one machine): the others wait, then find it built.
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_all(root)


def _build_all(root: Path) -> dict[str, Path]:
    folders = {name: root / name for name in BUILDS}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    running = []
    for name, (script, args) in BUILDS.items():
        out = folders[name]
        if (out / "model_index.json").is_file():
            continue
        tmp = root / f".{name}.building-{os.getpid()}"
        proc = subprocess.Popen(
            [sys.executable, str(HERE / script), str(tmp), *args],  # an absolute script stays as it is
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        running.append((name, tmp, out, proc))
    for name, tmp, out, proc in running:
        output, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"building the tiny {name} pipeline failed:\n{output[-4000:]}")
        if not out.exists():  # another session may have finished the same build first
            os.replace(tmp, out)
    # Siblings with the same components and another pipeline class (and call).
    siblings = {"flux-kontext": ("flux", "FluxPipeline", "FluxKontextPipeline")}
    if TORCHVISION:
        siblings["qwen-image-edit"] = (
            "qwen-image-edit-plus",
            "QwenImageEditPlusPipeline",
            "QwenImageEditPipeline",
        )
    for name, (source, source_class, sibling_class) in siblings.items():
        folders[name] = root / name
        if not (folders[name] / "model_index.json").is_file():
            _sibling(folders[source], source_class, sibling_class, folders[name])
    return folders


def _sibling(source: Path, source_class: str, sibling_class: str, out: Path) -> None:
    """FLUX.1 Kontext has FLUX.1's components, Qwen-Image-Edit Edit-Plus's: only the class differs."""
    import diffusers

    tmp = out.with_name(f".{out.name}.building-{os.getpid()}")
    loaded = getattr(diffusers, source_class).from_pretrained(source, local_files_only=True)
    getattr(diffusers, sibling_class).from_pipe(loaded).save_pretrained(tmp)
    index = json.loads((tmp / "model_index.json").read_text())
    assert index["_class_name"] == sibling_class
    os.replace(tmp, out)
