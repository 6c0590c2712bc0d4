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


def _cmd_scan(args: argparse.Namespace) -> int:
    from pipeline.scan import ScanConfig, run_scan

    cfg = ScanConfig(input=args.input, output=args.output, checkpoint=args.checkpoint,
                     noiseprint_weights=args.noiseprint_weights, actors=args.actors,
                     gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                     batch_size=args.batch_size, max_pixels=args.max_pixels, run_id=args.run_id,
                     ray_address=args.ray_address, s3_endpoint=args.s3_endpoint, variant=args.variant,
                     allow_download=not args.no_download, progress_every_s=args.progress_every)
    summary = run_scan(cfg)
    print(summary.text(), file=sys.stderr)
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from pipeline.query import format_rows, run_sql
    from pipeline.storage import StorageConfig

    cols, rows = run_sql(args.output, args.sql, storage=StorageConfig.from_env(args.s3_endpoint))
    print(format_rows(cols, rows, args.format))
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    import datetime as dt

    from pipeline.query import format_rows, top
    from pipeline.storage import StorageConfig

    since = dt.date.fromisoformat(args.since) if args.since else None
    cols, rows = top(args.output, k=args.k, min_score=args.min_score, since=since,
                     storage=StorageConfig.from_env(args.s3_endpoint))
    print(format_rows(cols, rows, args.format))
    return 0


def _cmd_train_noiseprint(args: argparse.Namespace) -> int:
    import json

    from .noiseprint_train import config_from_args, run_training

    summary = run_training(config_from_args(args))
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_eval_noiseprint(args: argparse.Namespace) -> int:
    import json

    from pipeline.storage import StorageConfig

    from .noiseprint_eval import evaluate

    res = evaluate(args.weights, args.corpus, baseline=args.baseline, storage=StorageConfig.from_env(args.s3_endpoint),
                   n_pairs=args.pairs, seed=args.seed)
    print(json.dumps(res, indent=1))
    return 0


def _cmd_make_camera_corpus(args: argparse.Namespace) -> int:
    from .camera_corpus import make_camera_corpus

    desc = make_camera_corpus(args.out, args.cameras, args.images, size=args.size, eval_images=args.eval_images,
                              seed=args.seed)
    print(f"wrote {len(desc['cameras'])} simulated cameras x {desc['images_per_camera']} training + "
          f"{desc['eval_images_per_camera']} held-out images to {args.out} (held-out photos: "
          f"{', '.join(desc['eval_photos'])})", file=sys.stderr)
    return 0


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

    sc = sub.add_parser("scan", help="score an archive (folder, s3:// prefix or manifest) into Parquet + maps with Ray")
    sc.add_argument("input", help="local directory, s3://bucket/prefix (any fsspec URI), single file, or a "
                                  "manifest (.parquet/.csv with a uri column, or .txt with one URI per line)")
    sc.add_argument("--output", required=True, help="local directory or object-store prefix for results/ and maps/")
    sc.add_argument("--checkpoint", help="trufor.pth.tar (default: $TRUFOR_WEIGHTS, then the cache, then download)")
    sc.add_argument("--noiseprint-weights", help="a noiseprint++.th-format file replacing the Noiseprint++ weights")
    sc.add_argument("--actors", type=int, default=1, help="size of the TruFor actor pool")
    sc.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 when a GPU exists, else 0")
    sc.add_argument("--cpus-per-actor", type=float, default=None, help="default: the CPUs shared among actors")
    sc.add_argument("--batch-size", type=int, default=4, help="images of one shape per forward")
    sc.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                    help="larger images become error rows (never resized)")
    sc.add_argument("--run-id", help="identifier written into every row (default: timestamp + random)")
    sc.add_argument("--ray-address", help="an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
    sc.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: $AWS_ENDPOINT_URL)")
    sc.add_argument("--variant", default="test_docker", choices=["test_docker", "train_test"])
    sc.add_argument("--no-download", action="store_true", help="fail instead of downloading missing weights")
    sc.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines off a terminal")
    sc.set_defaults(func=_cmd_scan)

    q = sub.add_parser("query", help="run SQL over scan results (view `results`) with DuckDB")
    q.add_argument("output", help="the scan's --output")
    q.add_argument("sql", help='e.g. "SELECT uri, score FROM results ORDER BY score DESC LIMIT 10"')
    q.add_argument("--format", default="table", choices=["table", "csv", "json"])
    q.add_argument("--s3-endpoint")
    q.set_defaults(func=_cmd_query)

    t = sub.add_parser("top", help="the highest-scoring images with their map URIs")
    t.add_argument("output", help="the scan's --output")
    t.add_argument("--k", type=int, default=50)
    t.add_argument("--min-score", type=float, default=0.5)
    t.add_argument("--since", help="only scans on or after this date (YYYY-MM-DD)")
    t.add_argument("--format", default="table", choices=["table", "csv", "json"])
    t.add_argument("--s3-endpoint")
    t.set_defaults(func=_cmd_top)

    from .noiseprint_train import add_arguments as add_train_arguments

    tn = sub.add_parser("train-noiseprint", help="retrain Noiseprint++ on a camera corpus with Ray Train")
    add_train_arguments(tn)
    tn.set_defaults(func=_cmd_train_noiseprint)

    en = sub.add_parser("eval-noiseprint", help="pair-verification AUC and camera identification on held-out images")
    en.add_argument("--weights", required=True, help="noiseprint++.th (or trufor.pth.tar) to evaluate")
    en.add_argument("--corpus", required=True, help="a corpus with <camera>/eval/ held-out images")
    en.add_argument("--baseline", help="weights to compare with, side by side (e.g. the released noiseprint++.th)")
    en.add_argument("--pairs", type=int, default=300, help="positive pairs (and as many negative)")
    en.add_argument("--seed", type=int, default=0)
    en.add_argument("--s3-endpoint")
    en.set_defaults(func=_cmd_eval_noiseprint)

    mc = sub.add_parser("make-camera-corpus", help="simulated cameras from real photographs (scikit-image data)")
    mc.add_argument("--out", required=True)
    mc.add_argument("--cameras", type=int, default=8)
    mc.add_argument("--images", type=int, default=24, help="training images per camera")
    mc.add_argument("--eval-images", type=int, default=None, help="held-out images per camera (default images/2)")
    mc.add_argument("--size", type=int, default=192)
    mc.add_argument("--seed", type=int, default=0)
    mc.set_defaults(func=_cmd_make_camera_corpus)

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
        from pipeline.storage import redact

        print(f"trufor-scan: error: {redact(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
