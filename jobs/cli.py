"""The `trufor-scan` command line."""
from __future__ import annotations

import argparse
import sys

from trufor_core.image import DEFAULT_MAX_PIXELS
from trufor_core.weights import LICENCE_NOTICE, OFFICIAL_WEIGHTS_URL, OFFICIAL_ZIP_MD5, WeightsError, cache_dir


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import PredictConfig, run_predict

    cfg = PredictConfig(input=args.input, output=args.output, checkpoint=args.checkpoint,
                        noiseprint_weights=args.noiseprint_weights, save_np=args.save_np,
                        overwrite=args.overwrite, device=args.device, variant=args.variant,
                        max_pixels=args.max_pixels, allow_download=not args.no_download)
    s = run_predict(cfg)
    print(f"listed {s.listed} images: {s.done} written, {s.existing} already existed (kept), "
          f"{len(s.errors)} errors; {len(s.not_images)} files skipped as not images; {s.seconds:.1f} s",
          file=sys.stderr)
    for path in s.not_images:
        print(f"skipped (not an image extension): {path}", file=sys.stderr)
    for path, msg in s.errors:
        print(f"failed: {path}: {msg}", file=sys.stderr)
    return 1 if s.errors else 0


def _cmd_weights_download(args: argparse.Namespace) -> int:
    from trufor_core.weights import download_weights

    path = download_weights(args.dir or cache_dir(), url=args.url, md5=args.md5)
    print(path)
    return 0


def _cmd_weights_synthesize(args: argparse.Namespace) -> int:
    from trufor_core.checkpoint import write_synthetic_checkpoint

    out = write_synthetic_checkpoint(args.out, noiseprint=args.noiseprint)
    print(f"wrote UNTRAINED test weights (fixture recipe{', real Noiseprint++' if args.noiseprint else ''}): {out}",
          file=sys.stderr)
    print(out)
    return 0


def _cmd_weights_licence(_: argparse.Namespace) -> int:
    print(LICENCE_NOTICE)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trufor-scan", description="TruFor image-forgery detection at archive scale.")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", help="score images like the official test script (one .npz per image)")
    pr.add_argument("--input", "-in", required=True, help="a file, a directory (recursive) or a glob")
    pr.add_argument("--output", "-out", required=True, help="output directory, or a .npz file for one image")
    pr.add_argument("--checkpoint", help="trufor.pth.tar (default: $TRUFOR_WEIGHTS, then the cache, then download)")
    pr.add_argument("--noiseprint-weights", help="a noiseprint++.th-format file replacing the Noiseprint++ weights")
    pr.add_argument("--save-np", "--save_np", action="store_true", help="also store the Noiseprint++ map as np++")
    pr.add_argument("--overwrite", action="store_true", help="replace existing outputs (the official script keeps them)")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    pr.add_argument("--variant", default="test_docker", choices=["test_docker", "train_test"],
                    help="train_test: confidence-head BN eps 1e-3 as in TruFor_train_test")
    pr.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse images with more pixels")
    pr.add_argument("--no-download", action="store_true", help="fail instead of downloading missing weights")
    pr.set_defaults(func=_cmd_predict)

    w = sub.add_parser("weights", help="get, synthesize or inspect weights").add_subparsers(dest="weights_cmd", required=True)
    d = w.add_parser("download", help="fetch the official weights (MD5-checked) and show the licence")
    d.add_argument("--dir", help=f"destination directory (default: {cache_dir()})")
    d.add_argument("--url", default=OFFICIAL_WEIGHTS_URL, help=argparse.SUPPRESS)
    d.add_argument("--md5", default=OFFICIAL_ZIP_MD5, help=argparse.SUPPRESS)
    d.set_defaults(func=_cmd_weights_download)
    s = w.add_parser("synthesize", help="build UNTRAINED weights with the parity-fixture recipe (tests, benchmarks)")
    s.add_argument("--out", required=True, help="output checkpoint path")
    s.add_argument("--noiseprint", help="real noiseprint++.th for the dncnn.* weights (as the fixtures do)")
    s.set_defaults(func=_cmd_weights_synthesize)
    lic = w.add_parser("licence", help="print the licence terms of the official weights")
    lic.set_defaults(func=_cmd_weights_licence)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (WeightsError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"trufor-scan: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
