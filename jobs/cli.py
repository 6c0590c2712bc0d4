"""The `trufor-scan` command line."""
from __future__ import annotations

import argparse
import os
import sys
import traceback

from trufor_core.weights import LICENCE_NOTICE, OFFICIAL_WEIGHTS_URL, OFFICIAL_ZIP_MD5, WeightsError, cache_dir


def _cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.base.options import from_args

    from .predict import PredictConfig, run_predict

    s = run_predict(from_args(PredictConfig, args, "predict"))
    print(f"listed {s.listed} images: {s.done} written, {s.existing} already existed (kept), "
          f"{len(s.errors)} errors; {len(s.not_images)} files skipped as not images; {s.seconds:.1f} s",
          file=sys.stderr)
    for path in s.not_images:
        print(f"skipped (not an image extension): {path}", file=sys.stderr)
    for path, msg in s.errors:
        print(f"failed: {path}: {msg}", file=sys.stderr)
    return EXIT_ERROR_ROWS if s.errors else EXIT_OK


def _cmd_scan(args: argparse.Namespace) -> int:
    from pipeline.base.options import from_args
    from pipeline.scan.driver import ScanConfig, run_scan

    summary = run_scan(from_args(ScanConfig, args, args.command, incremental=args.command == "sweep"))
    print(summary.text(), file=sys.stderr)
    return EXIT_ERROR_ROWS if summary.errors else EXIT_OK


def _read_config(args: argparse.Namespace):
    """(ReadConfig, storage, the calibration it names or None) of `query`, `top` or `contradictions`."""
    from pipeline.base.options import from_args
    from pipeline.results.query import ReadConfig

    cfg = from_args(ReadConfig, args, args.command)
    storage, spec = cfg.storage(), cfg.calibration_spec()
    if spec is None:
        return cfg, storage, None
    from pipeline.results.calibration import load_calibration

    return cfg, storage, load_calibration(spec, cfg.output, storage)


def _cmd_query(args: argparse.Namespace) -> int:
    from pipeline.base.sql import run_sql
    from pipeline.results.query import format_rows

    cfg, storage, cal = _read_config(args)
    calibrated = None
    if cal:
        from pipeline.results.calibration import connector

        calibrated = connector(cal)
    cols, rows = run_sql(cfg.output, cfg.sql, storage=storage, connector=calibrated, as_of=cfg.as_of,
                         limits=cfg.limits())
    print(format_rows(cols, rows, cfg.format))
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    from pipeline.results.query import format_rows, top

    cfg, storage, cal = _read_config(args)
    if cal:
        from pipeline.results.calibration import top_calibrated

        cols, rows = top_calibrated(cfg.output, cal, k=cfg.k, min_score=cfg.flag_score(), since=cfg.since_date(),
                                    storage=storage, as_of=cfg.as_of)
    else:
        cols, rows = top(cfg.output, k=cfg.k, min_score=cfg.flag_score(), since=cfg.since_date(),
                         storage=storage, as_of=cfg.as_of)
    print(format_rows(cols, rows, cfg.format))
    return 0


def _cmd_contradictions(args: argparse.Namespace) -> int:
    from pipeline.results.contradictions import contradictions
    from pipeline.results.query import format_rows

    cfg, storage, cal = _read_config(args)
    cols, rows = contradictions(cfg.output, k=cfg.k, min_score=cfg.flag_score(), storage=storage,
                                calibration=cal)
    print(format_rows(cols, rows, cfg.format))
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from pipeline.base.migrate import MigrateConfig, migrate
    from pipeline.base.options import from_args

    cfg = from_args(MigrateConfig, args, "migrate")
    print(migrate(cfg.output, cfg.storage(), cfg.wait).text(cfg.output), file=sys.stderr)
    return EXIT_OK


def _cmd_compact(args: argparse.Namespace) -> int:
    from pipeline.base.options import from_args
    from pipeline.base.store import CompactConfig, compact

    cfg = from_args(CompactConfig, args, "compact")
    for name, r in compact(cfg).items():
        print(f"compact {cfg.output.rstrip('/')}/{name}: {r['files_before']} files -> {r['files_after']} "
              f"({r['compacted']} compacted into {r['written']}), version {r['version']}"
              + (f"; vacuum deleted {r['deleted']} files older than {cfg.retain:g} days" if cfg.vacuum else ""),
              file=sys.stderr)
    return EXIT_OK


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from pipeline.base.options import from_args
    from pipeline.results.calibration import CalibrateConfig, calibrate
    from pipeline.results.query import format_rows

    cal = calibrate(from_args(CalibrateConfig, args, "calibrate"))
    cols = ["source", "n", "threshold", "false_positives", "fpr", "fpr_ci95", "too_small_for_target", "forged_n", "tpr"]
    print(format_rows(cols, [tuple(str(s.get(c)) if c == "fpr_ci95" else s.get(c) for c in cols)
                             for s in cal["sources"]], "table"))
    for w in cal["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"calibration {cal['id']} (target FPR {cal['target_fpr']:g}, weights {cal['weights_sha256'][:12]}) "
          f"written to {cal['path']}", file=sys.stderr)
    return EXIT_OK


def _cmd_duplicates(args: argparse.Namespace) -> int:
    from pipeline.base.options import from_args
    from pipeline.results.duplicates import (DuplicatesConfig, cluster_summary, find_duplicates, member_lines,
                                             write_members)
    from pipeline.results.query import format_rows

    cfg = from_args(DuplicatesConfig, args, "duplicates")
    members = find_duplicates(cfg)
    if cfg.out:
        write_members(members, cfg.out, cfg.storage())
    cols, lines = cluster_summary(members)
    shown = lines[:cfg.k]
    if cfg.members:
        cols, shown = member_lines(members, [r[0] for r in shown])
    print(format_rows(cols, shown, cfg.format))
    print(f"{len(lines)} clusters of near-copies ({members.num_rows} images, distance <= {cfg.max_distance}); "
          f"{min(cfg.k, len(lines))} shown" + (f"; all members written to {cfg.out}" if cfg.out else ""), file=sys.stderr)
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from pipeline.base.options import from_args
    from pipeline.review.report import ReportConfig, build_report

    res = build_report(from_args(ReportConfig, args, "report"))
    print(res.text(), file=sys.stderr)
    return EXIT_OK


def _cmd_show(args: argparse.Namespace) -> int:
    from pipeline.base.options import from_args
    from pipeline.review.evidence import ShowConfig, show

    cfg = from_args(ShowConfig, args, "show")
    row = show(cfg)
    print(f"{row['uri']}: score {row['score']:.4f}; figure: {cfg.png}", file=sys.stderr)
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from pipeline.base.options import from_args
    from pipeline.review.evidence import ExportConfig, export

    res = export(from_args(ExportConfig, args, "export"))
    for folder in res.folders:
        print(folder)
    for folder, why in res.incomplete:
        print(f"written without its original: {folder}: {why}", file=sys.stderr)
    for key, why in res.failed:
        print(f"not exported: {key}: {why}", file=sys.stderr)
    print(f"export: {len(res.folders)} bundles written ({len(res.incomplete)} without their original), "
          f"{len(res.failed)} not exported", file=sys.stderr)
    return EXIT_ERROR_ROWS if res.failed or res.incomplete else EXIT_OK


def _cmd_train_noiseprint(args: argparse.Namespace) -> int:
    import json

    from .noiseprint_train import config_from_args, run_training

    summary = run_training(config_from_args(args))
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_eval_noiseprint(args: argparse.Namespace) -> int:
    import json

    from noiseprint_lab.metrics import evaluate
    from pipeline.base.storage import StorageConfig

    res = evaluate(args.weights, args.corpus, baseline=args.baseline, storage=StorageConfig.from_env(args.s3_endpoint),
                   n_pairs=args.pairs, seed=args.seed)
    print(json.dumps(res, indent=1))
    return 0


def _cmd_make_camera_corpus(args: argparse.Namespace) -> int:
    from noiseprint_lab.cameras import make_camera_corpus

    desc = make_camera_corpus(args.out, args.cameras, args.images, size=args.size, eval_images=args.eval_images,
                              seed=args.seed, held_out_cameras=args.held_out_cameras)
    print(f"wrote {len(desc['cameras'])} simulated cameras x {desc['images_per_camera']} training + "
          f"{desc['eval_images_per_camera']} held-out images to {args.out} (held-out photos: "
          f"{', '.join(desc['eval_photos'])})", file=sys.stderr)
    return 0


def _cmd_make_splice_benchmark(args: argparse.Namespace) -> int:
    from noiseprint_lab.splices import BenchmarkConfig, make_splice_benchmark
    from pipeline.base.options import from_args

    cfg = from_args(BenchmarkConfig, args, "make-splice-benchmark")
    desc = make_splice_benchmark(cfg.corpus, cfg.out, cfg.per_subset, cfg.seed)
    print(f"wrote {len(desc['items'])} images ({cfg.per_subset} spliced + {cfg.per_subset} pristine per subset) to "
          f"{cfg.out}; cameras seen {desc['cameras_seen']}, unseen {desc['cameras_unseen']}", file=sys.stderr)
    return 0


def _cmd_fit_noise_anomaly(args: argparse.Namespace) -> int:
    from noiseprint_lab.localizers import FitConfig, fit_from_corpus
    from pipeline.base.options import from_args

    cfg = from_args(FitConfig, args, "fit-noise-anomaly")
    model = fit_from_corpus(cfg, log=lambda m: print(m, file=sys.stderr))
    print(f"fitted on {model.images} pristine images: {cfg.out} (fixed threshold {model.threshold:.4g})",
          file=sys.stderr)
    return 0


def _cmd_eval_splices(args: argparse.Namespace) -> int:
    import json

    from noiseprint_lab.splice_eval import SpliceEvalConfig, evaluate_splices
    from pipeline.base.options import from_args

    cfg = from_args(SpliceEvalConfig, args, "eval-splices")
    print(json.dumps(evaluate_splices(cfg.benchmark, cfg.weights, cfg.noise_anomaly,
                                      log=lambda m: print(m, file=sys.stderr)), indent=1))
    return 0


def _cmd_make_demo_archive(args: argparse.Namespace) -> int:
    from .demo_archive import make_demo_archive

    files = make_demo_archive(args.out)
    print(f"wrote {len(files)} files to {args.out} (photographs, a splice, a repost, a truncated file, a text file)",
          file=sys.stderr)
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


# Exit status (README "Exit status"): 0 every input ok (or skipped); 3 the run finished and every
# input has its row, some of them error rows; 1 the job failed while running (its rows so far are
# committed, the next sweep completes it); 2 it could not start (arguments, weights, input, SQL
# refused or past --timeout); 4 another run holds OUTPUT's write lease (cron: try again later).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR_ROWS, EXIT_BUSY = 0, 1, 2, 3, 4


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, the other commands get no arguments (they import nothing heavy,
    so that `query` and `top` never import torch or Ray)."""
    p = argparse.ArgumentParser(prog="trufor-scan", description="TruFor image-forgery detection at archive scale.")
    sub = p.add_subparsers(dest="command", required=True)

    def full(name: str) -> bool:
        return only is None or only == name

    pr = sub.add_parser("predict", help="score images like the official test script (one .npz per image)")
    if full("predict"):
        from pipeline.base.options import add_options

        from .predict import PredictConfig

        add_options(pr, PredictConfig, "predict")
    pr.set_defaults(func=_cmd_predict)

    for name, text in (("scan", "score an archive (folder, s3:// prefix or manifest) into the Delta table + maps with Ray"),
                       ("sweep", "the nightly command: scan only what OUTPUT has not scored yet (new or changed "
                                 "files, transient errors, interrupted runs); copies of scored bytes are not rescored")):
        sc = sub.add_parser(name, help=text)
        if full(name):
            from pipeline.base.options import add_options
            from pipeline.scan.driver import ScanConfig

            add_options(sc, ScanConfig, name)
        sc.set_defaults(func=_cmd_scan)

    for name, text in (("query", "run SQL over scan results (views `results` and `latest`) with DuckDB"),
                       ("top", "the highest-scoring images with their map URIs (or, calibrated, the flagged ones)"),
                       ("contradictions", "images whose content credentials (C2PA, valid or trusted) declare no edit "
                                          "while TruFor flags them")):
        rd = sub.add_parser(name, help=text)
        if full(name):
            from pipeline.base.options import add_options
            from pipeline.results.query import ReadConfig

            add_options(rd, ReadConfig, name)
        rd.set_defaults(func={"query": _cmd_query, "top": _cmd_top, "contradictions": _cmd_contradictions}[name])

    def derived(name: str, text: str, module: str, cls: str, func) -> None:
        """A command whose options are derived from the config class ``module.cls``."""
        cmd = sub.add_parser(name, help=text)
        if full(name):
            import importlib

            from pipeline.base.options import add_options

            add_options(cmd, getattr(importlib.import_module(module), cls), name)
        cmd.set_defaults(func=func)

    derived("migrate", "convert an OUTPUT of the old layout (parts + _runs/*.json) into the Delta table, every row kept",
            "pipeline.base.migrate", "MigrateConfig", _cmd_migrate)
    derived("compact", "Delta optimize: many small files into few (safe beside a sweep); --vacuum deletes old files",
            "pipeline.base.store", "CompactConfig", _cmd_compact)

    ca = sub.add_parser("calibrate", help="per-source thresholds for a target false-positive rate, from known-pristine "
                                          "images scanned into OUTPUT")
    if full("calibrate"):
        from pipeline.base.options import add_options
        from pipeline.results.calibration import CalibrateConfig

        add_options(ca, CalibrateConfig, "calibrate")
    ca.set_defaults(func=_cmd_calibrate)

    du = sub.add_parser("duplicates", help="near-copies (resized, recompressed, lightly cropped) grouped into clusters, "
                                           "with the best copy and the score spread")
    if full("duplicates"):
        from pipeline.base.options import add_options
        from pipeline.results.duplicates import DuplicatesConfig

        add_options(du, DuplicatesConfig, "duplicates")
    du.set_defaults(func=_cmd_duplicates)

    rp = sub.add_parser("report", help="a review page of the top candidates (static HTML that opens from disk)")
    if full("report"):
        from pipeline.base.options import add_options
        from pipeline.review.report import ReportConfig

        add_options(rp, ReportConfig, "report")
    rp.set_defaults(func=_cmd_report)

    for name, text, cls in (("show", "the four-panel figure of one scanned image (image | anomaly | confidence | ...)",
                             "ShowConfig"),
                            ("export", "evidence bundles: original, figure, maps, row, versions, how to reproduce",
                             "ExportConfig")):
        ev = sub.add_parser(name, help=text)
        if full(name):
            from pipeline.base.options import add_options
            from pipeline.review import evidence

            add_options(ev, getattr(evidence, cls), name)
        ev.set_defaults(func=_cmd_show if name == "show" else _cmd_export)

    tn = sub.add_parser("train-noiseprint", help="retrain Noiseprint++ on a camera corpus with Ray Train")
    if full("train-noiseprint"):
        from .noiseprint_train import add_arguments as add_train_arguments

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
    mc.add_argument("--held-out-cameras", type=int, default=0,
                    help="the last N cameras get no training images (for the splice benchmark's unseen subsets)")
    mc.set_defaults(func=_cmd_make_camera_corpus)

    for name, text, module, cls, func in (
            ("make-splice-benchmark", "spliced and pristine images from a camera corpus (seen/unseen cameras)",
             "noiseprint_lab.splices", "BenchmarkConfig", _cmd_make_splice_benchmark),
            ("fit-noise-anomaly", "fit the noise-anomaly localiser (PaDiM on DnCNN activations) on pristine images",
             "noiseprint_lab.localizers", "FitConfig", _cmd_fit_noise_anomaly),
            ("eval-splices", "localisation metrics of Noiseprint++ localisers on a splice benchmark (JSON)",
             "noiseprint_lab.splice_eval", "SpliceEvalConfig", _cmd_eval_splices)):
        derived(name, text, module, cls, func)

    dm = sub.add_parser("make-demo-archive", help="a small archive to try a scan on (the default input of `make scan`)")
    dm.add_argument("--out", required=True)
    dm.set_defaults(func=_cmd_make_demo_archive)

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
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return args.func(args)
    except (WeightsError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as e:
        from pipeline.base.lease import LeaseBusy
        from pipeline.base.storage import one_line, redact
        from pipeline.base.store import RunFailed

        print(f"trufor-scan: error: {one_line(redact(str(e)), 2000)}", file=sys.stderr)
        if os.environ.get("TRUFOR_DEBUG"):
            traceback.print_exc()
        return EXIT_FAILED if isinstance(e, RunFailed) else EXIT_BUSY if isinstance(e, LeaseBusy) else EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - anything else (an object store unreachable, ...): one line, never a traceback
        from pipeline.base.storage import one_line, redact

        print(f"trufor-scan: error: {type(e).__name__}: {one_line(redact(str(e)), 2000)}", file=sys.stderr)
        if os.environ.get("TRUFOR_DEBUG"):
            traceback.print_exc()
        return EXIT_FAILED


COMMANDS = ("predict", "scan", "sweep", "query", "top", "contradictions", "migrate", "compact", "calibrate", "duplicates", "report", "show", "export", "train-noiseprint", "eval-noiseprint", "make-camera-corpus",
            "make-splice-benchmark", "fit-noise-anomaly", "eval-splices",
            "make-demo-archive", "weights")


if __name__ == "__main__":
    sys.exit(main())
