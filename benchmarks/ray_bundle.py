"""Ray for a lent GPU machine in one call's carry: the wheel without the parts the kit never uses.

    python benchmarks/ray_bundle.py SOURCE [--out .whl-ray] [--preset 9]

The Ray wheel for the device machine's Python 3.12 is 75.6 MiB, more than one call may carry with
the kit and the EfficientNet-Lite0 wheels (64 MiB in all), so it used to travel as split parts over
two calls. Most of it is for other jobs: ``ray/jars`` (Java workers, 30.7 MiB), RLlib, Serve,
Ray LLM and the dashboard's web client. Without them, and with xz instead of the wheel's deflate,
Ray core is about a quarter of the wheel (benchmarks/RESULTS.md): it travels in the same call as
everything else.

SOURCE is a Ray wheel or a folder holding an installed ``ray`` package (site-packages). Writes
``OUT/ray-<version>-slim.tar.xz`` holding ``ray/`` and its ``dist-info`` (file modes kept), to be
unpacked into the target folder of ``pip install --target`` (``benchmarks/device_checks.sh`` does).
Ray's own dependencies that the machine lacks travel as wheels beside it (see benchmarks/RESULTS.md).

Dry run on this box (tests/test_ray_bundle.py): a bundle of the installed Ray, unpacked, runs a task
on a local cluster.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

# the parts of Ray the kit's runner never imports: Java workers, RLlib, Serve, Ray LLM, the dashboard's web UI
OMITTED = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/")


def kept(name: str) -> bool:
    """Whether a path inside Ray's wheel goes into the bundle (only ``ray/`` and its dist-info, minus OMITTED)."""
    top = name.split("/", 1)[0]
    if top != "ray" and not re.fullmatch(r"ray-[^/]+\.dist-info", top):
        return False
    return not any(name.startswith(prefix) for prefix in OMITTED) and "/__pycache__/" not in name


def _from_wheel(path: Path) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    with zipfile.ZipFile(path) as wheel:
        for info in wheel.infolist():
            if info.is_dir() or not kept(info.filename):
                continue
            entry = tarfile.TarInfo(info.filename)
            entry.size = info.file_size
            entry.mode = (info.external_attr >> 16) & 0o777 or 0o644
            entry.mtime = int(time.mktime(info.date_time + (0, 0, -1)))
            yield entry, wheel.read(info)


def _from_folder(site: Path) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    roots = [site / "ray", *sorted(site.glob("ray-*.dist-info"))]
    for root in roots:
        for file in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            name = file.relative_to(site).as_posix()
            if kept(name):
                entry = tarfile.TarInfo(name)
                stat = file.stat()
                entry.size, entry.mode, entry.mtime = stat.st_size, stat.st_mode & 0o777, int(stat.st_mtime)
                yield entry, file.read_bytes()


def version_of(source: Path) -> str:
    """Ray's version from the wheel's file name or the installed dist-info folder."""
    found = re.match(r"ray-([^-]+)-", source.name) if source.is_file() else None
    if found is None and source.is_dir():
        info = sorted(source.glob("ray-*.dist-info"))
        found = re.match(r"ray-([^-]+)\.dist-info", info[-1].name) if info else None
    if found is None:
        raise ValueError(f"{source}: neither a Ray wheel (ray-VERSION-...whl) nor a folder with ray-VERSION.dist-info")
    return found.group(1)


def write_bundle(source: Path, out: Path, preset: int = 9) -> Path:
    """Write ``out/ray-<version>-slim.tar.xz`` from a Ray wheel or an installed Ray; returns its path."""
    source, out = Path(source), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such Ray wheel or folder")
    if source.is_dir() and not (source / "ray" / "__init__.py").is_file():
        raise ValueError(f"{source}: holds no installed 'ray' package (give site-packages or a Ray wheel)")
    entries = _from_wheel(source) if source.is_file() else _from_folder(source)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"ray-{version_of(source)}-slim.tar.xz"
    partial = target.with_name(f".{target.name}.tmp")
    files = 0
    try:
        with tarfile.open(partial, "w:xz", preset=preset) as bundle:
            for entry, payload in entries:
                bundle.addfile(entry, io.BytesIO(payload))
                files += 1
        if files == 0:
            raise ValueError(f"{source}: no Ray files found")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)  # a cut-off run leaves no half bundle under the final name
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a Ray wheel (.whl) or a site-packages folder holding ray/")
    parser.add_argument("--out", default=".whl-ray", help="folder for the bundle (ignored by git)")
    parser.add_argument("--preset", type=int, default=9, choices=range(10), help="xz level (9: smallest, slowest)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        path = write_bundle(Path(args.source), Path(args.out), args.preset)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        parser.error(str(err))
    print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
