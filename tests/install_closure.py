"""What `pip install dynalora` (or `dynalora[extra]`) brings, computed from the installed distributions' metadata.

    .venv/bin/python tests/install_closure.py            # MB of `dynalora`, `dynalora[train]`, `[train,dev]`

    from install_closure import closure, link_closure
    dists = closure("dynalora")                         # {"dynalora", "onnxruntime", "numpy", ...} (normalized names)
    link_closure(dists, fresh_venv_site_packages)       # exactly those files, as symlinks

The closure starts from the requirements of `dynalora` (without extras, or with the given ones) and follows each
installed distribution's own requirements, evaluating environment markers for this interpreter (and the extras
each requirement asks for), the way pip would resolve them here. Used by tests/edge_runtime/test_edge_install.py
to build a venv that can import nothing else, and to measure the install sizes quoted in the README.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

# Heavy distributions of the training stack: none of them may be in the runtime-only closure.
TRAINING_STACK = ("torch", "transformers", "peft", "optimum", "optimum-onnx", "ray", "accelerate")


def normalize(name: str) -> str:
    """PEP 503 name: 'PyYAML' / 'optimum_onnx' -> 'pyyaml' / 'optimum-onnx'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def site_packages() -> list[str]:
    """This interpreter's install folders. Only they count as installed: `python -m pytest` also puts the
    working directory on sys.path, where a stale `dynalora.egg-info` from an editable build may lie."""
    return list(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))


def _distribution(name: str) -> metadata.Distribution:
    for dist in metadata.Distribution.discover(name=name, path=site_packages()):
        return dist
    raise LookupError(f"{name} is required but not installed in {sys.prefix}; run `make setup`")


def _applies(req: Requirement, extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": extra}) for extra in ("", *extras))


def closure(root: str = "dynalora", extras: Iterable[str] = ()) -> dict[str, metadata.Distribution]:
    """Installed distributions (normalized name -> Distribution) that installing `root[extras]` pulls in."""
    found: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        key = (normalize(name), wanted)
        if key in seen:
            continue
        seen.add(key)
        dist = found.get(key[0]) or _distribution(name)
        found[key[0]] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if _applies(req, wanted):
                todo.append((req.name, frozenset(req.extras)))
    return found


def installed_files(dist: metadata.Distribution) -> list[Path]:
    """The files a distribution installed under site-packages (its RECORD), without scripts outside it."""
    return [Path(str(f)) for f in dist.files or [] if ".." not in Path(str(f)).parts]


def size_mb(dists: Iterable[metadata.Distribution]) -> float:
    """Bytes on disk of the distributions' installed files, in MB (10^6 bytes)."""
    total = 0
    for dist in dists:
        for rel in installed_files(dist):
            path = Path(str(dist.locate_file(rel)))
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6


def link_closure(dists: Iterable[metadata.Distribution], site_packages: Path) -> int:
    """Symlink every installed file of `dists` into `site_packages` at its own relative path; returns the count.

    File by file, not whole top-level folders: a namespace folder shared with a distribution outside the closure
    (`google/`) then holds only the closure's files, so nothing else becomes importable.
    """
    count = 0
    for dist in dists:
        for rel in installed_files(dist):
            source = Path(str(dist.locate_file(rel)))
            target = site_packages / rel
            if not source.is_file() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(source, target)
            count += 1
    return count


def _tree_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


if __name__ == "__main__":
    site = Path(site_packages()[0])
    for label, extras in (("pip install dynalora", ()), ("pip install 'dynalora[train]'", ("train",)),
                          ("make setup (-e '.[train,dev]')", ("train", "dev"))):
        dists = closure("dynalora", extras)
        print(f"{label:34s} {len(dists):3d} distributions {size_mb(dists.values()):8.1f} MB")
    print(f"everything installed in {site}: {_tree_mb(site):.1f} MB")
    edge = closure("dynalora")
    print("runtime only:", ", ".join(f"{n} {size_mb([d]):.1f}" for n, d in
                                     sorted(edge.items(), key=lambda kv: -size_mb([kv[1]]))))
