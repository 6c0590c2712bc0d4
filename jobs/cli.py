"""The `trufor-scan` command line: a table of commands, each a config dataclass and a function.

Every command's options are derived from its config's fields (``pipeline.base.options``); the
parser, the command list and the reference in docs/cli.md are derived from ``COMMAND_TABLE``.
No CLI library: the derivation is 90 lines we already have, and it keeps the configs importable
one at a time (`query` and `top` never import torch or Ray).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable

from trufor_core.weights import LICENCE_NOTICE, WeightsError, cache_dir


def _cmd_predict(cfg) -> int:
    from .predict import run_predict

    s = run_predict(cfg)
    print(f"listed {s.listed} images: {s.done} written, {s.existing} already existed (kept), "
          f"{len(s.errors)} errors; {len(s.not_images)} files skipped as not images; {s.seconds:.1f} s",
          file=sys.stderr)
    for path in s.not_images:
        print(f"skipped (not an image extension): {path}", file=sys.stderr)
    for path, msg in s.errors:
        print(f"failed: {path}: {msg}", file=sys.stderr)
    if s.weights:
        print(s.weights + (" (WARNING: their scores and maps mean nothing)" if s.untrained else ""), file=sys.stderr)
    return EXIT_ERROR_ROWS if s.errors else EXIT_OK


def _cmd_scan(cfg) -> int:
    from pipeline.scan.driver import run_scan

    summary = run_scan(cfg)
    print(summary.text(), file=sys.stderr)
    return EXIT_ERROR_ROWS if summary.errors else EXIT_OK


def _calibration(cfg):
    """The calibration that a `query`, `top` or `contradictions` config names, or None."""
    spec = cfg.calibration_spec()
    if spec is None:
        return None
    from pipeline.results.calibration import load_calibration

    return load_calibration(spec, cfg.output, cfg.storage())


def _cmd_query(cfg) -> int:
    from pipeline.base.sql import run_sql
    from pipeline.results.query import format_rows

    cal, calibrated = _calibration(cfg), None
    if cal:
        from pipeline.results.calibration import connector

        calibrated = connector(cal)
    cols, rows = run_sql(cfg.output, cfg.sql, storage=cfg.storage(), connector=calibrated, as_of=cfg.as_of,
                         limits=cfg.limits())
    print(format_rows(cols, rows, cfg.format))
    return EXIT_OK


def _cmd_top(cfg) -> int:
    from pipeline.results.query import format_rows, top

    cal = _calibration(cfg)
    if cal:
        from pipeline.results.calibration import top_calibrated

        cols, rows = top_calibrated(cfg.output, cal, k=cfg.k, min_score=cfg.flag_score(), since=cfg.since_date(),
                                    storage=cfg.storage(), as_of=cfg.as_of)
    else:
        cols, rows = top(cfg.output, k=cfg.k, min_score=cfg.flag_score(), since=cfg.since_date(),
                         storage=cfg.storage(), as_of=cfg.as_of)
    print(format_rows(cols, rows, cfg.format))
    if not rows:
        _say_why_empty(cfg, cal)
    return EXIT_OK


def _say_why_empty(cfg, cal, credentials: bool = False) -> None:
    from pipeline.results.explain import why_empty

    connector = None
    if cal:
        from pipeline.results.calibration import connector as calibrated

        connector = calibrated(cal)
    print(why_empty(cfg.output, cfg.flag_score(), cfg.since_date(), cfg.storage(), connector, cfg.as_of,
                    credentials=credentials), file=sys.stderr)


def _cmd_contradictions(cfg) -> int:
    from pipeline.results.contradictions import contradictions
    from pipeline.results.query import format_rows

    cal = _calibration(cfg)
    cols, rows = contradictions(cfg.output, k=cfg.k, min_score=cfg.flag_score(), storage=cfg.storage(),
                                calibration=cal)
    print(format_rows(cols, rows, cfg.format))
    if not rows:
        _say_why_empty(cfg, cal, credentials=True)
    return EXIT_OK


def _cmd_migrate(cfg) -> int:
    from pipeline.base.migrate import migrate

    print(migrate(cfg.output, cfg.storage(), cfg.wait).text(cfg.output), file=sys.stderr)
    return EXIT_OK


def _cmd_compact(cfg) -> int:
    from pipeline.base.store import compact

    for name, r in compact(cfg).items():
        print(f"compact {cfg.output.rstrip('/')}/{name}: {r['files_before']} files -> {r['files_after']} "
              f"({r['compacted']} compacted into {r['written']}), version {r['version']}"
              + (f"; vacuum deleted {r['deleted']} files older than {cfg.retain:g} days" if cfg.vacuum else ""),
              file=sys.stderr)
    return EXIT_OK


def _cmd_calibrate(cfg) -> int:
    from pipeline.results.calibration import calibrate
    from pipeline.results.query import format_rows

    cal = calibrate(cfg)
    cols = ["source", "n", "threshold", "false_positives", "fpr", "fpr_ci95", "too_small_for_target", "forged_n", "tpr",
            "tpr_ci95"]
    print(format_rows(cols, [tuple(s.get(c) for c in cols) for s in cal["sources"]], "table"))
    for w in cal["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"calibration {cal['id']} (target FPR {cal['target_fpr']:g}, weights {cal['weights_sha256'][:12]}) "
          f"written to {cal['path']}", file=sys.stderr)
    return EXIT_OK


def _cmd_duplicates(cfg) -> int:
    from pipeline.results.duplicates import cluster_summary, find_duplicates, member_lines, write_members
    from pipeline.results.query import format_rows

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


def _cmd_report(cfg) -> int:
    from pipeline.review.report import build_report

    print(build_report(cfg).text(), file=sys.stderr)
    return EXIT_OK


def _cmd_show(cfg) -> int:
    from pipeline.review.evidence import show

    row = show(cfg)
    print(f"{row['uri']}: score {row['score']:.4f}; figure: {cfg.png}", file=sys.stderr)
    return EXIT_OK


def _cmd_export(cfg) -> int:
    from pipeline.review.evidence import export

    res = export(cfg)
    for folder in res.folders:
        print(folder)
    for folder, why in res.incomplete:
        print(f"written without its original: {folder}: {why}", file=sys.stderr)
    for key, why in res.failed:
        print(f"not exported: {key}: {why}", file=sys.stderr)
    print(f"export: {len(res.folders)} bundles written ({len(res.incomplete)} without their original), "
          f"{len(res.failed)} not exported", file=sys.stderr)
    return EXIT_ERROR_ROWS if res.failed or res.incomplete else EXIT_OK


def _cmd_evaluate(cfg) -> int:
    from pipeline.review.evaluation import run_evaluate

    res = run_evaluate(cfg, log=lambda m: print(m, file=sys.stderr))
    print(res.text(), file=sys.stderr)
    return EXIT_OK


def _cmd_noiseprint_train(cfg) -> int:
    from .noiseprint_train import run_training

    print(json.dumps(run_training(cfg), indent=1))
    return EXIT_OK


def _cmd_noiseprint_eval(cfg) -> int:
    from noiseprint_lab.metrics import evaluate

    print(json.dumps(evaluate(cfg.weights, cfg.corpus, baseline=cfg.baseline, storage=cfg.storage(),
                              n_pairs=cfg.pairs, seed=cfg.seed), indent=1))
    return EXIT_OK


def _cmd_make_camera_corpus(cfg) -> int:
    from noiseprint_lab.cameras import make_camera_corpus

    desc = make_camera_corpus(**asdict(cfg))
    print(f"wrote {len(desc['cameras'])} simulated cameras x {desc['images_per_camera']} training + "
          f"{desc['eval_images_per_camera']} held-out images to {cfg.out} (held-out photos: "
          f"{', '.join(desc['eval_photos'])})", file=sys.stderr)
    return EXIT_OK


def _cmd_make_splice_benchmark(cfg) -> int:
    from noiseprint_lab.splices import make_splice_benchmark

    desc = make_splice_benchmark(cfg.corpus, cfg.out, cfg.per_subset, cfg.seed)
    print(f"wrote {len(desc['items'])} images ({cfg.per_subset} spliced + {cfg.per_subset} pristine per subset) to "
          f"{cfg.out}; cameras seen {desc['cameras_seen']}, unseen {desc['cameras_unseen']}", file=sys.stderr)
    return EXIT_OK


def _cmd_fit_noise_anomaly(cfg) -> int:
    from noiseprint_lab.localizers import fit_from_corpus

    model = fit_from_corpus(cfg, log=lambda m: print(m, file=sys.stderr))
    print(f"fitted on {model.images} pristine images: {cfg.out} (fixed threshold {model.threshold:.4g})",
          file=sys.stderr)
    return EXIT_OK


def _cmd_eval_splices(cfg) -> int:
    from noiseprint_lab.splice_eval import evaluate_splices

    print(json.dumps(evaluate_splices(cfg.benchmark, cfg.weights, cfg.noise_anomaly,
                                      log=lambda m: print(m, file=sys.stderr)), indent=1))
    return EXIT_OK


def _cmd_make_demo_archive(cfg) -> int:
    from .demo_archive import make_demo_archive

    files = make_demo_archive(cfg.out)
    print(f"wrote {len(files)} files to {cfg.out} (photographs, a splice with content credentials that declare no "
          "edit, a repost, a resized repost, a truncated file, a text file)",
          file=sys.stderr)
    return EXIT_OK


def _cmd_weights_download(cfg) -> int:
    from trufor_core.weights import download_weights

    print(download_weights(cfg.dir or cache_dir(), url=cfg.url, md5=cfg.md5))
    return EXIT_OK


def _cmd_weights_get(cfg) -> int:
    from mantranet_core.weights import get_weights

    print(get_weights(cfg.dir, source=cfg.source, url=cfg.url, blob_sha1=cfg.blob_sha1))
    return EXIT_OK


def _cmd_weights_synthesize(cfg) -> int:
    from trufor_core.checkpoint import write_synthetic_checkpoint

    out = write_synthetic_checkpoint(cfg.out, noiseprint=cfg.noiseprint)
    print(f"wrote UNTRAINED test weights (fixture recipe{', real Noiseprint++' if cfg.noiseprint else ''}): {out}",
          file=sys.stderr)
    print(out)
    return EXIT_OK


def _cmd_weights_licence(_) -> int:
    from mantranet_core.weights import LICENCE_NOTICE as MANTRANET_LICENCE

    print(LICENCE_NOTICE + "\n\n" + MANTRANET_LICENCE)
    return EXIT_OK


# Exit status (docs/operations.md): 0 every input ok (or skipped); 3 the run finished and every
# input has its row, some of them error rows; 1 the job failed while running (its rows so far are
# committed, the next sweep completes it); 2 it could not start (arguments, weights, input, SQL
# refused or past --timeout); 4 another run holds OUTPUT's write lease (cron: try again later).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR_ROWS, EXIT_BUSY = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Command:
    """One command: what users type, its one-line help, its options' config and what it does."""

    name: str  # "scan", or "group sub" for a command in a group ("noiseprint train")
    help: str
    config: str  # "module:Class", imported only when the command is parsed (and for the full --help)
    run: Callable[[object], int]  # the built config -> exit status
    aliases: tuple[str, ...] = ()  # older top-level names, kept for one release
    fixed: dict = field(default_factory=dict)  # config fields the command sets itself

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.name.split())


COMMAND_TABLE: tuple[Command, ...] = (
    Command("predict", "score images like the official test script (one .npz per image)",
            "jobs.predict:PredictConfig", _cmd_predict),
    Command("scan", "score an archive (folder, s3:// prefix or manifest) into the Delta table + maps with Ray",
            "pipeline.scan.driver:ScanConfig", _cmd_scan),
    Command("sweep", "the nightly command: scan only what OUTPUT has not scored yet (new or changed files, transient "
            "errors, interrupted runs); copies of scored bytes are not rescored",
            "pipeline.scan.driver:ScanConfig", _cmd_scan, fixed={"incremental": True}),
    Command("query", "run SQL over scan results (views `results`, `latest`, `runs`) with DuckDB",
            "pipeline.results.query:ReadConfig", _cmd_query),
    Command("top", "the highest-scoring images with their map URIs (or, calibrated, the flagged ones)",
            "pipeline.results.query:ReadConfig", _cmd_top),
    Command("contradictions", "images whose content credentials (C2PA, valid or trusted) declare no edit while "
            "TruFor flags them", "pipeline.results.query:ReadConfig", _cmd_contradictions),
    Command("calibrate", "per-source thresholds for a target false-positive rate, from known-pristine images "
            "scanned into OUTPUT", "pipeline.results.calibration:CalibrateConfig", _cmd_calibrate),
    Command("duplicates", "near-copies (resized, recompressed, lightly cropped) grouped into clusters, with the best "
            "copy and the score spread", "pipeline.results.duplicates:DuplicatesConfig", _cmd_duplicates),
    Command("evaluate", "how well the scanned rows agree with a ground truth (labels, masks): image- and pixel-level "
            "figures per detector, source and size, as JSON, PNGs and a page", "pipeline.review.evaluation:EvaluateConfig",
            _cmd_evaluate),
    Command("report", "a review page of the top candidates (static HTML that opens from disk)",
            "pipeline.review.report:ReportConfig", _cmd_report),
    Command("show", "the four-panel figure of one scanned image (image | anomaly | confidence | ...)",
            "pipeline.review.evidence:ShowConfig", _cmd_show),
    Command("export", "evidence bundles: original, figure, maps, row, versions, how to reproduce",
            "pipeline.review.evidence:ExportConfig", _cmd_export),
    Command("compact", "Delta optimize: many small files into few (safe beside a sweep); --vacuum deletes old files",
            "pipeline.base.store:CompactConfig", _cmd_compact),
    Command("migrate", "convert an OUTPUT of the old layout (parts + _runs/*.json) into the Delta tables, every row "
            "kept", "pipeline.base.migrate:MigrateConfig", _cmd_migrate),
    Command("make-demo-archive", "a small archive to try a scan on (the default input of `make scan`)",
            "jobs.demo_archive:DemoArchiveConfig", _cmd_make_demo_archive),
    Command("noiseprint train", "retrain Noiseprint++ on a camera corpus with Ray Train",
            "noiseprint_lab.training:TrainConfig", _cmd_noiseprint_train, aliases=("train-noiseprint",)),
    Command("noiseprint eval", "pair-verification AUC and camera identification on held-out images (JSON)",
            "noiseprint_lab.metrics:NoiseprintEvalConfig", _cmd_noiseprint_eval, aliases=("eval-noiseprint",)),
    Command("noiseprint make-corpus", "simulated cameras from real photographs (scikit-image data)",
            "noiseprint_lab.cameras:CameraCorpusConfig", _cmd_make_camera_corpus, aliases=("make-camera-corpus",)),
    Command("noiseprint make-splice-benchmark", "spliced and pristine images from a camera corpus (seen/unseen "
            "cameras)", "noiseprint_lab.splices:BenchmarkConfig", _cmd_make_splice_benchmark,
            aliases=("make-splice-benchmark",)),
    Command("noiseprint fit-anomaly", "fit the noise-anomaly localiser (PaDiM on DnCNN activations) on pristine "
            "images", "noiseprint_lab.localizers:FitConfig", _cmd_fit_noise_anomaly, aliases=("fit-noise-anomaly",)),
    Command("noiseprint eval-splices", "localisation metrics of Noiseprint++ localisers on a splice benchmark (JSON)",
            "noiseprint_lab.splice_eval:SpliceEvalConfig", _cmd_eval_splices, aliases=("eval-splices",)),
    Command("weights download", "fetch the official weights (MD5-checked) and show the licence",
            "jobs.weights:DownloadConfig", _cmd_weights_download),
    Command("weights get", "a second detector's official weights (mantranet: ManTraNet_Ptrain4.h5, checksum-"
            "verified; --from FILE offline) and their licence", "jobs.weights:GetConfig", _cmd_weights_get),
    Command("weights synthesize", "build UNTRAINED weights with the parity-fixture recipe (tests, benchmarks)",
            "jobs.weights:SynthesizeConfig", _cmd_weights_synthesize),
    Command("weights licence", "print the licence terms of the official weights (TruFor, ManTra-Net)",
            "jobs.weights:LicenceConfig", _cmd_weights_licence),
)
GROUP_HELP = {"noiseprint": "the Noiseprint++ lab: corpora, training, evaluation, localisers",
              "weights": "get, synthesize or inspect weights"}
COMMANDS: tuple[str, ...] = tuple(c.name for c in COMMAND_TABLE)
ALIASES: dict[str, Command] = {a: c for c in COMMAND_TABLE for a in c.aliases}


def config_class(cmd: Command) -> type:
    import importlib

    module, cls = cmd.config.split(":")
    return getattr(importlib.import_module(module), cls)


def find_command(argv: list[str]) -> Command | None:
    """The command that ``argv`` names (by its words or an old alias), or None."""
    words = [a for a in argv if not a.startswith("-")][:2]
    for c in COMMAND_TABLE:
        if tuple(words[:len(c.words)]) == c.words:
            return c
    return ALIASES.get(words[0]) if words else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser, derived from ``COMMAND_TABLE``; with ``only`` (a command's name), the other commands
    get no arguments (their configs are not imported: `query` and `top` never import torch or Ray)."""
    from pipeline.base.options import add_options

    renamed = ", ".join(f"{a} = {c.name}" for a, c in ALIASES.items())
    p = argparse.ArgumentParser(prog="trufor-scan", description="TruFor image-forgery detection at archive scale.",
                                epilog=f"Old names, kept for one release: {renamed}.")
    top = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}

    def leaf(parent: argparse._SubParsersAction, word: str, cmd: Command, listed: bool = True) -> None:
        # A parser added without help= is accepted but not listed in its parent's --help.
        sp = parent.add_parser(word, description=cmd.help, **({"help": cmd.help} if listed else {}))
        if only is None or only == cmd.name:
            add_options(sp, config_class(cmd), cmd.name)
        sp.set_defaults(cmd=cmd, typed=word)

    for cmd in COMMAND_TABLE:
        if len(cmd.words) == 1:
            leaf(top, cmd.name, cmd)
            continue
        group, word = cmd.words
        if group not in groups:
            gp = top.add_parser(group, help=GROUP_HELP[group], description=GROUP_HELP[group])
            groups[group] = gp.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
        leaf(groups[group], word, cmd)
    for alias, cmd in ALIASES.items():  # accepted, left out of --help (the epilog names them)
        leaf(top, alias, cmd, listed=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    found = find_command(argv)
    args = build_parser(found.name if found else None).parse_args(argv)
    cmd: Command = args.cmd
    try:
        return _run(cmd, args)
    except BrokenPipeError:  # `trufor-scan query ... | head`: the reader is gone, so are we, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _run(cmd: Command, args: argparse.Namespace) -> int:
    try:
        if args.typed in ALIASES:
            print(f"trufor-scan: note: `{args.typed}` is now `{cmd.name}`; the old name goes in a later release",
                  file=sys.stderr)
        from pipeline.base.options import from_args

        return cmd.run(from_args(config_class(cmd), args, cmd.name, **cmd.fixed))
    except BrokenPipeError:
        raise
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


if __name__ == "__main__":
    sys.exit(main())
