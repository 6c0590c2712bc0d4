"""`trufor-scan export`: evidence bundles a fact-checker can attach to a case, and `show`'s figure.

One folder per chosen image (``<sha256[:12]>-<file name>``):

    original.<ext>          the scanned bytes, checked against the row's sha256 (or
    original-pointer.json   where it lives, its size and sha256, when larger than --max-original-mb;
    original-missing.txt    or why it could not be read now: the rest of the bundle is still written)
    figure.png              image | anomaly | confidence | anomaly x confidence, score in the title
    anomaly.png             the anomaly map, 8-bit grey (value x 255), full image resolution
    confidence.png          the confidence map, the same way
    row.json                the image's full result row (latest scan)
    README.txt              what was run, with which weights and code, how to read and reproduce it
    reproduce.sh            re-scores original.<ext> with `trufor-scan predict` and prints both scores
    SHA256SUMS              of every file above (`sha256sum -c SHA256SUMS`)

Nothing in a bundle depends on when or where it was exported: the same input gives the same bytes.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.base.options import opt
from pipeline.base.storage import StorageConfig, StorageOptions, one_line, redact
from pipeline.review.figures import (HOW_TO_READ, SHA256_RE, encode_png, figure_png, find_row, four_panel_figure,
                                     load_mantranet_map, load_maps, map_to_gray8, plain_row, read_original)

FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp", "GIF": "gif", "MPO": "jpg", "HEIF": "heic"}
# Expected agreement of a re-run with the row's score (measured: tests/tolerances.py, BENCHMARKS.md).
AGREEMENT = ("fp32: ~1e-4 on another CPU (kernels sum in another order), ~1e-6 on the same machine; "
             "bf16/fp16: ~5e-3")


@dataclass(frozen=True)
class ExportConfig(StorageOptions):
    """Settings of one `export`; the command line is derived from these fields."""

    output: str = field(metadata=opt("the scan's --output (local directory or s3:// prefix)", positional=True))
    uri: tuple[str, ...] = field(metadata=opt("images to export: their uris or sha256 (a prefix of 8+ digits)"))
    out: str = field(metadata=opt("directory to write the bundles into (one folder per image)"))
    max_original_mb: float = field(default=100.0, metadata=opt(
        "originals larger than this are not copied: the bundle points to them (uri, size, sha256)"))


@dataclass(frozen=True)
class ShowConfig(StorageOptions):
    """Settings of one `show`; the command line is derived from these fields."""

    uri: str = field(metadata=opt("the image's uri or sha256 (a prefix of 8+ digits)", positional=True,
                                  metavar="URI_OR_SHA256"))
    output: str = field(metadata=opt("the scan's --output (local directory or s3:// prefix)"))
    png: str = field(metadata=opt("where to write the figure (PNG)"))


def render_figure(row: dict, output: str, storage: StorageConfig, original=None) -> tuple[bytes, dict]:
    """(PNG bytes, panel boxes) of the four-panel figure of one ok row."""
    anomaly, confidence = load_maps(row, output, storage)
    original = original if original is not None else read_original(row, storage)
    return figure_png(four_panel_figure(row, original.rgb, anomaly, confidence, problem=original.problem,
                                        mantranet=load_mantranet_map(row, output, storage)))


def show(cfg: ShowConfig) -> dict:
    """Write the figure of one scanned image; returns its row."""
    storage = cfg.storage()
    row = find_row(cfg.output, cfg.uri, storage)
    png, _ = render_figure(row, cfg.output, storage)
    Path(cfg.png).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.png).write_bytes(png)
    return row


def bundle_name(row: dict) -> str:
    if not SHA256_RE.match(row.get("sha256") or ""):  # it names a folder: never a path from the data
        raise ValueError(f"no valid sha256 in the row of {row.get('uri')!r}: {str(row.get('sha256'))[:80]!r}")
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", row["uri"].rstrip("/").rsplit("/", 1)[-1]).strip("._") or "image"
    return f"{row['sha256'][:12]}-{base[:60]}"


def _readme(row: dict, original_note: str, files: list[tuple[str, str]]) -> str:
    w = row
    lines = ["trufor-scan evidence bundle", "=" * 27, "",
             f"Image:    {w['uri']}",
             f"sha256:   {w['sha256']} (of the original file's bytes)",
             f"Original: {original_note}",
             f"Image:    {w['format']} {w['width']}x{w['height']} px, {w['size_bytes']} bytes; EXIF make "
             f"{w['exif_make'] or '-'}, model {w['exif_model'] or '-'}, software {w['exif_software'] or '-'}",
             f"Scanned:  {plain_row(w)['scanned_at']} by run {w['run_id']}"
             + (f" (a copy of {w['dedup_of']}, whose result it repeats)" if w.get("dedup_of") else ""),
             f"Code:     trufor-scan {w['code_version']}, torch {w['torch_version']}, device {w['device']}, "
             f"precision {w['precision']}",
             f"Weights:  {w['model_name']}, sha256 {w['weights_sha256']}"
             + (f"; Noiseprint++ replaced by sha256 {w['noiseprint_sha256']}" if w.get("noiseprint_sha256") else ""),
             ]
    if w.get("weights_untrained"):
        lines.append("WARNING:  these weights are UNTRAINED (synthesized for tests): the score and maps mean nothing.")
    lines += ["", f"Result:   integrity score {w['score']:.6f} ({'at or above' if w['score'] >= 0.5 else 'below'} "
              f"the paper's 0.5 threshold)",
              f"          anomalous and trusted pixels {w['frac_anom_conf']:.4f}, anomalous pixels {w['frac_anom']:.4f}, "
              f"max anomaly x confidence {w['max_anom_conf']:.4f}",
              "", "How to read it (TruFor, CVPR 2023):"] + [f"  - {t}" for t in HOW_TO_READ]
    lines += ["", "Files:"] + [f"  {name:<24} {what}" for name, what in files]
    lines += ["", "To check and reproduce:",
              "  sha256sum -c SHA256SUMS",
              "  TRUFOR_WEIGHTS=/path/to/the/weights sh reproduce.sh"
              + ("   (and TRUFOR_NOISEPRINT=/path/to/noiseprint++ weights)" if w.get("noiseprint_sha256") else ""),
              "reproduce.sh checks the weights' sha256, runs `trufor-scan predict` on the original (the same",
              "model and pre-processing as the scan, one image at a time) and prints the recorded and the new score.",
              f"It needs trufor-scan {w.get('code_version') or 'unknown'} (the code that scored it; on another machine: "
              "pip install trufor-scan of that version, or the repository at that commit) and finds it in",
              "$TRUFOR_SCAN, else in the environment that made this bundle, else on PATH.",
              f"Expected agreement: {AGREEMENT}.", ""]
    return "\n".join(lines)


def _reproduce_sh(row: dict, original: str) -> str:
    """The bundle's script. Every value that comes from the row (a file that may have been edited) is
    shell-quoted (``shlex.quote``): none can ever run as code."""
    q = shlex.quote
    np_sha = row.get("noiseprint_sha256")
    cmd = ["$TOOL", "predict", "--input", original, "--output", "reproduced.npz", "--checkpoint",
           "$TRUFOR_WEIGHTS"] + (["--noiseprint-weights", "$TRUFOR_NOISEPRINT"] if np_sha else []) + [
           "--precision", row["precision"] or "fp32", "--device", "cpu", "--no-download", "--overwrite"]
    quoted = " ".join(f'"{c}"' if c in ("$TOOL", "$TRUFOR_WEIGHTS", "$TRUFOR_NOISEPRINT") else q(str(c)) for c in cmd)
    here = Path(sys.executable).with_name("trufor-scan")  # the tool that made this bundle, if still there
    # From the row (an edited file may hold a line break): one line, and only safe characters, since it
    # also stands in a comment of the script, where quoting does not apply.
    version = re.sub(r"[^A-Za-z0-9.+_-]", "?", one_line(str(row.get("code_version") or "unknown"), 100))
    release = version.split("+")[0]
    commit = version.split("+g")[1] if "+g" in version else None
    need = (f"trufor-scan not found: install trufor-scan {release} (pip install trufor-scan=={release}"
            + (f", or from its repository at commit {commit}: pip install -e ." if commit else "")
            + "), or set TRUFOR_SCAN to the trufor-scan executable")
    checks = [("TRUFOR_WEIGHTS", row["weights_sha256"], "TruFor weights")] + (
        [("TRUFOR_NOISEPRINT", np_sha, "Noiseprint++ weights")] if np_sha else [])
    out = ["#!/bin/sh",
           "# Re-score this bundle's original with the weights it was scored with (trufor-scan predict).",
           "set -eu", 'cd "$(dirname "$0")"',
           f"# Needs trufor-scan {version} (the code that scored it) and the weights named below.",
           "# The tool: $TRUFOR_SCAN, else the one that made this bundle (if that machine still has it),",
           "# else trufor-scan on PATH.",
           f'TOOL=${{TRUFOR_SCAN:-}}; [ -n "$TOOL" ] || {{ [ -x {q(str(here))} ] && TOOL={q(str(here))}; }} || '
           'TOOL=$(command -v trufor-scan) || true',
           f'[ -n "$TOOL" ] && [ -x "$TOOL" ] || {{ echo {q(need)} >&2; exit 127; }}',
           f"printf '%s  %s\\n' {q(str(row['sha256']))} {q(original)} | sha256sum -c --quiet - || "
           "{ echo 'the original is not the scanned file (sha256 differs)' >&2; exit 2; }"]
    for var, sha, what in checks:
        out += [f'[ -n "${{{var}:-}}" ] || {{ echo {q(f"set {var} to the {what} file with sha256 {sha}")} >&2; exit 2; }}',
                f'printf \'%s  %s\\n\' {q(str(sha))} "${var}" | sha256sum -c --quiet - || '
                f'{{ echo {q(f"{var} is not the {what} this image was scored with (sha256 {sha})")} >&2; exit 2; }}']
    code = (f"import numpy as np; print('recorded score {float(row['score']):.6f}'); "
            "print('reproduced score %.6f' % float(np.load('reproduced.npz')['score']))")
    out += [quoted,
            "# The interpreter trufor-scan runs under (it has numpy), else python3.",
            'PY=$(head -n 1 "$TOOL" | sed -n "s/^#!//p")',
            f'"${{PY:-python3}}" -c {q(code)}', ""]
    return "\n".join(out)


def write_bundle(row: dict, output: str, out_dir: Path, storage: StorageConfig, max_original_bytes: int) -> tuple[Path, str | None]:
    """Write one image's bundle; returns (folder, a problem to report or None)."""
    folder = out_dir / bundle_name(row)
    original = read_original(row, storage)
    files: dict[str, bytes] = {}
    described: list[tuple[str, str]] = []
    problem = None
    if original.data is None:  # unreadable now, or changed since the scan
        problem = original.problem
        name = "original-missing.txt"
        files[name] = (f"The original could not be included: {problem}\nIt was {row['uri']} "
                       f"(sha256 {row['sha256']}, {row['size_bytes']} bytes) when scanned.\n").encode()
        described.append((name, "why the original is not here"))
        note, original_name = f"NOT INCLUDED: {problem}", "original"
    elif len(original.data) > max_original_bytes:
        name = "original-pointer.json"
        files[name] = json.dumps({"uri": row["uri"], "sha256": row["sha256"], "size_bytes": len(original.data),
                                  "why": f"larger than --max-original-mb ({max_original_bytes / 2**20:g} MiB)"},
                                 indent=1, sort_keys=True).encode() + b"\n"
        ext = FORMAT_EXT.get(row.get("format") or "", "bin")
        original_name = f"original.{ext}"
        described.append((name, f"where the original is (fetch it as {original_name} to reproduce)"))
        note = f"not copied ({len(original.data)} bytes): see {name}"
    else:
        original_name = f"original.{FORMAT_EXT.get(row.get('format') or '', 'bin')}"
        files[original_name] = original.data
        described.append((original_name, "the scanned file, byte for byte (its sha256 is checked above)"))
        note = f"{original_name} (verified: same sha256 as when scanned)"
    anomaly, confidence = load_maps(row, output, storage)
    mantranet = load_mantranet_map(row, output, storage)
    png, _ = figure_png(four_panel_figure(row, original.rgb, anomaly, confidence, problem=original.problem,
                                          mantranet=mantranet))
    files["figure.png"] = png
    files["anomaly.png"] = encode_png(map_to_gray8(anomaly))
    files["confidence.png"] = encode_png(map_to_gray8(confidence))
    if mantranet is not None:
        files["mantranet.png"] = encode_png(map_to_gray8(mantranet))
        described.append(("mantranet.png", "ManTra-Net's map (the second detector: scan --mantranet), the same way "
                          "(stored as 4x4 cell means, resized back)"))
    files["row.json"] = json.dumps(plain_row(row), indent=1, sort_keys=True).encode() + b"\n"
    described += [("figure.png", "image | anomaly | confidence | anomaly x confidence (| ManTra-Net), with the score"),
                  ("anomaly.png", f"anomaly map, 8-bit grey = value x 255, {row['width']}x{row['height']} px"),
                  ("confidence.png", "confidence map, the same way"),
                  ("row.json", "the full result row of the image's latest scan"),
                  ("reproduce.sh", "re-score the original with the same weights"),
                  ("SHA256SUMS", "sha256 of every file here")]
    files["README.txt"] = _readme(row, note, [("README.txt", "this text")] + described).encode()
    files["reproduce.sh"] = _reproduce_sh(row, original_name).encode()
    files["SHA256SUMS"] = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                                  for name, data in sorted(files.items())).encode()
    # The folder is written only once everything is made: no half bundles.
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # a re-export replaces the folder's contents, it never mixes two
        old.unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, problem


@dataclass
class ExportResult:
    folders: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (uri, one-line reason): no bundle written
    incomplete: list = field(default_factory=list)  # (folder, reason): written without its original


def export(cfg: ExportConfig) -> ExportResult:
    """Write one bundle per chosen image; an image that cannot be exported is reported, the others still are."""
    storage = cfg.storage()
    out = Path(cfg.out)
    res = ExportResult()
    for key in cfg.uri:
        try:
            row = find_row(cfg.output, key, storage)
            folder, problem = write_bundle(row, cfg.output, out, storage, int(cfg.max_original_mb * 2**20))
            res.folders.append(folder)
            if problem:
                res.incomplete.append((folder, problem))
        except Exception as e:  # noqa: BLE001 - reported per image; the other bundles are still written
            res.failed.append((key, one_line(redact(f"{type(e).__name__}: {e}"), 500)))
    return res
