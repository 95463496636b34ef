"""The command line ``python -m fsfsl_utils.data export|pack``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from .dataset import LABEL_POLICIES, DataError
from .pack import PACK_SUFFIX, check_pack_name, write_pack
from .sources import load_elpv, load_imagefolder
from .tree_export import export


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsfsl_utils.data",
                                     description="Export the study's split or pack a data set into one portable file.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write the study split as an ImageFolder tree + manifest.csv")
    exp.add_argument("out", help="target folder (must be empty or absent)")
    exp.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    exp.add_argument("--labels", default="study", choices=LABEL_POLICIES, help="label policy (default study)")
    exp.add_argument("--force", action="store_true", help="replace a non-empty target folder")
    pack = sub.add_parser("pack", help="write a data set as one portable, lossless pack file (.fsfslpack)")
    pack.add_argument("out", help=f"the pack file to write (ends in {PACK_SUFFIX})")
    pack.add_argument("--labels", default="study", choices=LABEL_POLICIES, help="ELPV label policy (default study)")
    pack.add_argument("--source", default="elpv", help="'elpv' (default) or an ImageFolder folder")
    args = parser.parse_args(argv)
    if args.command == "pack":
        try:
            check_pack_name(args.out)  # before any data is loaded
            if args.source == "elpv":
                ds = load_elpv(args.labels)
            else:
                ds = load_imagefolder(args.source)
            path = write_pack(ds, args.out, origin=args.source, labels=args.labels if args.source == "elpv" else "")
        except (DataError, FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {len(ds)} images ({ds.counts()}) to {path}: {path.stat().st_size / 2**20:.1f} MiB")
        return 0
    try:
        path = export(args.out, seed=args.seed, labels=args.labels, force=args.force)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = pd.read_csv(path / "manifest.csv")
    print(f"wrote {len(manifest)} images to {path}")
    print(manifest.groupby(["split", "label"]).size().to_string())
    return 0
