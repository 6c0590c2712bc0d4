"""Fast tier: the review page, `show`'s figure and evidence bundles on a generated results set (no model, no Ray).

The browser test is in the integration tier: it needs Chromium (Debian `chromium`) and Playwright;
without them it skips with the reason, except in CI (TRUFOR_REQUIRE_BROWSER=1) where it fails.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import markupsafe
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from page_check import browser_missing, check_report
from tolerances import FIGURE_PANEL_MEAN_ABS

sys.path.insert(0, str(REPO / "bench"))
from pipeline.base.storage import StorageConfig  # noqa: E402
from pipeline.review.evidence import ExportConfig, ShowConfig, export, render_figure, show  # noqa: E402
from pipeline.review.figures import colorize, find_row, load_maps, map_to_gray8, read_original, resize_map  # noqa: E402
from pipeline.review.report import ReportConfig, build_report, query_report  # noqa: E402
from report_data import make_results  # noqa: E402

URI_ATTACK = 's3://bucket/<script>window.__pwned = 1</script>".jpg'
EXIF_ATTACK = "<img src=x onerror=\"window.__pwned = 2\">"
N_IMAGES, N_ROWS = 6, 80


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict:
    """A scan-shaped output: 6 real images with maps, 74 other rows (ok, error, skipped), plus a row
    whose uri and EXIF software are HTML, and a file changed after its scan."""
    root = tmp_path_factory.mktemp("gen")
    out = root / "out"
    changed = root / "changed.jpg"
    changed.write_bytes(b"the bytes that were scanned")
    scanned_sha = hashlib.sha256(changed.read_bytes()).hexdigest()
    extra = [dict(uri=URI_ATTACK, status="ok", sha256="ab" * 32, score=0.999, width=64, height=48, format="JPEG",
                  exif_software=EXIF_ATTACK, exif_make="O'Brien & Sons", map_uri="maps/none.npz"),
             dict(uri="s3://bucket/traversal.jpg", status="ok", sha256="../../../escaped", score=0.998, width=64,
                  height=48, format="JPEG", map_uri="maps/none3.npz"),
             dict(uri=str(changed), status="ok", sha256=scanned_sha, score=0.001, width=64, height=48, format="JPEG",
                  map_uri="maps/none2.npz")]
    info = make_results(out, N_ROWS, N_IMAGES, seed=3, size=(96, 128), extra=extra)
    changed.write_bytes(b"other bytes since")
    return {"out": out, "root": root, "changed": str(changed), **info}


def test_report_page_escapes_data_and_counts(generated, tmp_path):
    page = tmp_path / "page"
    res = build_report(ReportConfig(output=str(generated["out"]), out=str(page), k=10))
    text = (page / "index.html").read_text()
    cards = re.findall(r'<article class="card" id="c-(\d+)"', text)
    assert len(cards) == res.shown == 10
    # Data never becomes markup: the uri and the EXIF string appear escaped, as text.
    assert "<script>window.__pwned" not in text and "onerror=\"window" not in text
    assert str(markupsafe.escape(URI_ATTACK)) in text and "&lt;img src=x onerror=" in text
    assert "O&#39;Brien &amp; Sons" in text
    assert text.count("<script") == 1  # its own report.js, nothing from the data
    # The first card is the highest score (the attack row, 0.999) and the banner says the weights are untrained.
    assert cards[0] == "0" and 'id="untrained-banner"' in text
    # Every picture the page names exists; the 6 real images got their card pictures and detail panels.
    srcs = set(re.findall(r'src="([^"]+)"', text)) - {"assets/report.js"}
    assert srcs and all((page / s).is_file() for s in srcs), [s for s in srcs if not (page / s).is_file()]
    thumbs = [s for s in srcs if s.endswith("thumb.jpg") and "conf" not in s]
    assert len(thumbs) == N_IMAGES
    assert len([s for s in srcs if s.endswith(("anomaly.jpg", "confidence.jpg", "product.jpg"))]) == 3 * N_IMAGES
    with Image.open(page / "assets" / "histogram.png") as im:
        assert im.size[0] > 300
    # The rows the page could not draw say why (the attack row's original and map do not exist).
    assert "original not readable" in text and "maps not readable" in text
    assert "no valid sha256 in the row" in text and not (tmp_path.parent / "escaped").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page"]


def test_report_summary_matches_sql(generated, tmp_path):
    cfg = ReportConfig(output=str(generated["out"]), out=str(tmp_path / "p"), k=5, min_score=0.5)
    candidates, s = query_report(cfg, StorageConfig())
    from pipeline.base.sql import connect

    con = connect(str(generated["out"]))
    by_status = dict(con.execute("SELECT status, count(*) FROM latest GROUP BY status").fetchall())
    n_ok_above = con.execute("SELECT count(*) FROM latest WHERE status = 'ok' AND score >= 0.5").fetchone()[0]
    errors = con.execute("SELECT count(*) FROM latest WHERE status = 'error'").fetchone()[0]
    con.close()
    assert con.timeout_s > 0  # every connection to the store has a deadline
    assert s.by_status == by_status and s.images == N_ROWS + 3 and s.candidates_total == n_ok_above
    assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates), reverse=True)
    assert len(candidates) == 5 and all(c["score"] >= 0.5 for c in candidates)
    assert sum(s.hist) == by_status["ok"]
    # Error rows grouped by message with the uri taken out: a few causes, counts adding up.
    assert sum(n for _, _, n, _ in s.errors) == errors and len(s.errors) <= 3
    assert all("<file>" in msg or "timed out" in msg for _, msg, _, _ in s.errors)
    assert len(s.runs) == 1 and s.runs[0]["rows"] == N_ROWS + 3 and s.untrained == N_ROWS + 3


def test_report_filters_are_bound_parameters(generated, tmp_path):
    def shown(**kw) -> list[dict]:
        return query_report(ReportConfig(output=str(generated["out"]), out=str(tmp_path / "p"), **kw),
                            StorageConfig())[0]

    assert {r["exif_make"] for r in shown(make="canon")} == {"Canon"}
    assert {r["exif_software"] for r in shown(software="photoshop")} == {"Adobe Photoshop 25.0"}
    assert [r["uri"] for r in shown(make="O'Brien")] == [URI_ATTACK]  # a quote is a value, not SQL
    assert [r["uri"] for r in shown(uri_glob="*<script>*")] == [URI_ATTACK]
    assert shown(make="'; DROP TABLE results; --") == []
    assert shown(since="2099-01-01") == [] and len(shown(since="2026-11-01", k=500)) > N_IMAGES
    assert shown(run_id="generated", k=3) and shown(run_id="other") == []
    with pytest.raises(ValueError, match="2026-13-45"):
        ReportConfig(output="x", out="y", since="2026-13-45")


def test_report_refuses_a_folder_it_did_not_write(generated, tmp_path):
    (tmp_path / "mine.txt").write_text("not a report")
    with pytest.raises(FileExistsError, match="not a trufor-scan report"):
        build_report(ReportConfig(output=str(generated["out"]), out=str(tmp_path), k=2))
    # Its own folder is replaced: no pictures of the earlier report stay behind.
    page = tmp_path / "page"
    build_report(ReportConfig(output=str(generated["out"]), out=str(page), k=6))
    build_report(ReportConfig(output=str(generated["out"]), out=str(page), k=2, make="Apple"))
    assert len(list((page / "c").rglob("thumb.jpg"))) <= 2


def test_changed_original_is_not_shown(generated):
    row = find_row(str(generated["out"]), generated["changed"])
    orig = read_original(row)
    assert orig.rgb is None and orig.data is None and "changed since it was scanned" in orig.problem


def test_show_figure_panels_are_the_stored_maps(generated, tmp_path):
    uri = generated["top"][0]
    row = find_row(str(generated["out"]), uri)
    assert find_row(str(generated["out"]), row["sha256"][:10])["uri"] == uri  # by a sha256 prefix too
    anomaly, confidence = load_maps(row, str(generated["out"]))
    png, boxes = render_figure(row, str(generated["out"]), StorageConfig())
    fig = np.asarray(Image.open(__import__("io").BytesIO(png)).convert("RGB")).astype(np.float32)
    assert set(boxes) == {"image", "anomaly map", "confidence map", "anomaly x confidence"}
    for title, m, scale in (("anomaly map", anomaly, "anomaly"), ("confidence map", confidence, "confidence"),
                            ("anomaly x confidence", anomaly * confidence, "product")):
        left, top, right, bottom = boxes[title]
        crop = fig[top + 2: bottom - 2, left + 2: right - 2]  # inside the axes frame
        assert crop.shape[0] > 100 and abs(crop.shape[1] / crop.shape[0] - m.shape[1] / m.shape[0]) < 0.05
        want = colorize(resize_map(m, (bottom - top, right - left)), scale)[2:-2, 2:-2].astype(np.float32)
        wrong = colorize(resize_map(m[::-1, ::-1], (bottom - top, right - left)), scale)[2:-2, 2:-2]
        err, err_wrong = np.abs(crop - want).mean(), np.abs(crop - wrong).mean()
        assert err < FIGURE_PANEL_MEAN_ABS < err_wrong, (title, err, err_wrong)
    # The CLI's figure is the same picture.
    out = tmp_path / "fig.png"
    show(ShowConfig(uri=uri, output=str(generated["out"]), png=str(out)))
    assert out.read_bytes() == png


def test_export_bundle_is_complete_and_reproducible(generated, tmp_path):
    uris = tuple(generated["top"][:2])
    a, b = export(ExportConfig(output=str(generated["out"]), uri=uris, out=str(tmp_path / "a"))), \
        export(ExportConfig(output=str(generated["out"]), uri=uris, out=str(tmp_path / "b")))
    assert len(a.folders) == 2 and not a.failed and not a.incomplete
    for fa, fb in zip(a.folders, b.folders):
        files = sorted(p.name for p in fa.iterdir())
        assert files == ["README.txt", "SHA256SUMS", "anomaly.png", "confidence.png", "figure.png", "original.jpg",
                         "reproduce.sh", "row.json"]
        assert all((fa / n).read_bytes() == (fb / n).read_bytes() for n in files)  # byte for byte
        sums = dict(line.split("  ")[::-1] for line in (fa / "SHA256SUMS").read_text().splitlines())
        assert all(hashlib.sha256((fa / n).read_bytes()).hexdigest() == h for n, h in sums.items())
        row = json.loads((fa / "row.json").read_text())
        assert hashlib.sha256((fa / "original.jpg").read_bytes()).hexdigest() == row["sha256"]
        anomaly, confidence = load_maps(find_row(str(generated["out"]), row["uri"]), str(generated["out"]))
        np.testing.assert_array_equal(np.asarray(Image.open(fa / "anomaly.png")), map_to_gray8(anomaly))
        np.testing.assert_array_equal(np.asarray(Image.open(fa / "confidence.png")), map_to_gray8(confidence))
        readme = (fa / "README.txt").read_text()
        assert row["weights_sha256"] in readme and "UNTRAINED" in readme and f"{row['score']:.6f}" in readme
        assert '"$TOOL" predict --input original.jpg' in (fa / "reproduce.sh").read_text()  # the tool found first


def test_an_output_moved_elsewhere_keeps_its_maps(generated, tmp_path):
    """Map references are relative to OUTPUT: a copy on another disk serves `show` and `export` as the original."""
    import shutil

    moved = tmp_path / "elsewhere" / "out"
    shutil.copytree(generated["out"], moved)
    uri = generated["top"][0]
    res = export(ExportConfig(output=str(moved), uri=(uri,), out=str(tmp_path / "bundle")))
    assert len(res.folders) == 1 and not res.failed and not res.incomplete
    a, c = load_maps(find_row(str(moved), uri), str(moved))
    a0, c0 = load_maps(find_row(str(generated["out"]), uri), str(generated["out"]))
    np.testing.assert_array_equal(a, a0)
    show(ShowConfig(uri=uri, output=str(moved), png=str(tmp_path / "fig.png")))
    assert Image.open(tmp_path / "fig.png").size[0] > 0


def test_export_large_missing_and_unknown(generated, tmp_path):
    top = generated["top"][0]
    res = export(ExportConfig(output=str(generated["out"]), uri=(top, generated["changed"], "s3://nope/x.jpg"),
                              out=str(tmp_path), max_original_mb=1e-4))
    res_bad = export(ExportConfig(output=str(generated["out"]), uri=("s3://bucket/traversal.jpg",), out=str(tmp_path)))
    assert "no valid sha256" in res_bad.failed[0][1] and not res_bad.folders
    assert [k for k, _ in res.failed] == [generated["changed"], "s3://nope/x.jpg"]
    assert "no scanned image" in res.failed[1][1]
    big = res.folders[0]
    pointer = json.loads((big / "original-pointer.json").read_text())
    assert pointer["uri"] == top and pointer["sha256"] == find_row(str(generated["out"]), top)["sha256"]
    assert not list(big.glob("original.*"))
    # The changed file has no maps in this generated set: reported, and no folder left behind for it.
    assert len(res.folders) == 1 and "maps" in res.failed[0][1]
    assert len(list(tmp_path.iterdir())) == 1
    # An original deleted since its scan (a post taken down): the bundle is written without it, and says so.
    info = make_results(tmp_path / "gone", 3, 2, seed=5, size=(64, 80))
    os.remove(info["images"][0])
    res = export(ExportConfig(output=str(tmp_path / "gone"), uri=(info["images"][0],), out=str(tmp_path / "b")))
    (folder, why), = res.incomplete
    assert res.folders == [folder] and "original not readable" in why
    assert (folder / "original-missing.txt").is_file() and (folder / "figure.png").is_file()
    assert "NOT INCLUDED" in (folder / "README.txt").read_text()


def test_report_reads_originals_from_object_storage(moto_endpoint, tmp_path, monkeypatch):
    """Originals on a real S3 endpoint (moto's server): read for the rows shown, verified, drawn."""
    import s3fs

    from conftest import S3_KEY, S3_SECRET

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    info = make_results(tmp_path / "out", 20, 3, seed=7, size=(64, 80), uri_prefix="s3://originals/day1")
    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=moto_endpoint)
    fs.mkdir("originals")
    fs.put(str(tmp_path / "out-images") + "/", "originals/day1/", recursive=True)
    res = build_report(ReportConfig(output=str(tmp_path / "out"), out=str(tmp_path / "page"), k=3,
                                    s3_endpoint=moto_endpoint))
    text = (tmp_path / "page" / "index.html").read_text()
    assert res.shown == 3 and res.problems == 0, text[text.find('class="problem"'):][:300]
    assert len(list((tmp_path / "page" / "c").rglob("thumb.jpg"))) == 3
    assert S3_SECRET not in text
    # Originals are never copied in: the page holds only pictures made from them.
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "page").rglob("*.jpg")}
    assert not set(sizes) & {Path(i).name for i in info["images"]}


def test_report_in_browser(generated, tmp_path):
    """The page as a person uses it: loads from disk, pictures decode, sort, filter, detail view."""
    why = browser_missing()
    if why:
        if os.environ.get("TRUFOR_REQUIRE_BROWSER"):
            pytest.fail(f"TRUFOR_REQUIRE_BROWSER is set but {why}")
        pytest.skip(f"no browser check: {why}")
    page = tmp_path / "page"
    build_report(ReportConfig(output=str(generated["out"]), out=str(page), k=12, min_score=0.0))
    facts = check_report(page, expected_cards=12, screenshot=tmp_path / "shot.png")
    assert facts["order"][0] == URI_ATTACK and facts["images"] >= 3 * N_IMAGES
    assert facts["pwned"] is None
    with Image.open(tmp_path / "shot.png") as im:
        assert im.size == (1400, 1000)


def test_output_plays_with_the_shell(generated, capsys):
    """CSV with \\n line endings and no trailing blank line; a reader that closes the pipe early ends
    the command quietly (exit 0, nothing on stderr); an empty answer says why in one line."""
    import shlex
    import subprocess

    from jobs.cli import main

    out = str(generated["out"])
    assert main(["query", out, "SELECT uri, score FROM latest ORDER BY uri LIMIT 3", "--format", "csv"]) == 0
    text = capsys.readouterr().out
    assert "\r" not in text and text.endswith("\n") and not text.endswith("\n\n") and len(text.splitlines()) == 4
    assert main(["query", out, "SELECT 1/3 AS third, [0.123456789, 2.0] AS ci"]) == 0
    assert "0.3333  [0.1235, 2]" in capsys.readouterr().out  # tables: 4 significant digits
    assert main(["top", out, "--min-score", "0.9999"]) == 0
    assert "no image scores at or above 0.9999 (--min-score): 80 scored, the highest 0.999" in capsys.readouterr().err
    assert main(["contradictions", out]) == 0
    assert "none of the 80 scored images carries valid or trusted content credentials" in capsys.readouterr().err
    exe = str(Path(sys.executable).with_name("trufor-scan"))
    p = subprocess.run(["bash", "-o", "pipefail", "-c", f"{shlex.quote(exe)} query {shlex.quote(out)} "
                        "'SELECT * FROM range(3000000)' --format csv | head -c 9"],
                       capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout, p.stderr) == (0, "range\n0\n1", "")


def test_paths_as_typed_and_repeated_flags(generated, tmp_path, monkeypatch, capsys):
    """`show` and `export` take a local path as it was typed for the scan (relative, with `..`, through
    a symlinked folder); `export --uri A --uri B` exports both; a manifest's `a/../b.jpg` is b.jpg."""
    from jobs.cli import main
    from pipeline.base.listing import list_input

    first, second = (Path(u) for u in generated["top"][:2])
    monkeypatch.chdir(first.parent.parent)
    (tmp_path / "link").symlink_to(first.parent)
    for typed in (f"{first.parent.name}/{first.name}", f"{first.parent.name}/../{first.parent.name}/{first.name}",
                  str(tmp_path / "link" / first.name)):
        assert find_row(str(generated["out"]), typed)["uri"] == str(first), typed
    assert main(["export", str(generated["out"]), "--uri", str(first), "--uri", f"{second.parent.name}/{second.name}",
                 "--out", str(tmp_path / "ev")]) == 0
    assert len(capsys.readouterr().out.split()) == 2  # two bundles
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"{first.parent.name}/../{first.parent.name}/{first.name}\n{tmp_path / 'link' / first.name}\n")
    assert [f.uri for f in list_input(str(manifest), StorageConfig())] == [str(first), str(first)]


def test_reproduce_sh_finds_its_tool_or_says_what_to_install(generated, tmp_path):
    """reproduce.sh runs with the project's tool off PATH (it finds the environment that made the
    bundle, or $TRUFOR_SCAN) and, where neither exists, fails with one line saying what to install."""
    import subprocess

    res = export(ExportConfig(output=str(generated["out"]), uri=(generated["top"][0],), out=str(tmp_path / "ev")))
    script = (res.folders[0] / "reproduce.sh").read_text()
    here = str(Path(sys.executable).with_name("trufor-scan"))
    assert here in script and "TRUFOR_SCAN" in script
    bare = {"PATH": "/usr/bin:/bin", "TRUFOR_WEIGHTS": "/nonexistent"}
    # With the tool found, the script goes on to the weights check (which fails here: no weights).
    p = subprocess.run(["sh", str(res.folders[0] / "reproduce.sh")], capture_output=True, text=True, env=bare,
                       timeout=60)
    assert p.returncode == 2 and "TRUFOR_WEIGHTS is not the TruFor weights" in p.stderr, p.stderr
    # A copy of the bundle where the tool is gone: one line naming the version to install.
    (res.folders[0] / "r2.sh").write_text(script.replace(here, "/gone/trufor-scan"))
    p = subprocess.run(["sh", str(res.folders[0] / "r2.sh")], capture_output=True, text=True, env=bare, timeout=60)
    assert p.returncode == 127 and p.stderr.startswith("trufor-scan not found: install trufor-scan generated")
    assert p.stderr.count("\n") == 1
    p = subprocess.run(["sh", str(res.folders[0] / "r2.sh")], capture_output=True, text=True, timeout=60,
                       env=dict(bare, TRUFOR_SCAN=here))
    assert p.returncode == 2 and "TRUFOR_WEIGHTS is not the TruFor weights" in p.stderr


def test_a_map_reference_to_a_fifo_is_never_opened(tmp_path):
    """A stored map is read like any input: a FIFO under maps/ (an edited table) is refused, not opened
    (opening it would block forever)."""
    import os

    from pipeline.base import maps

    fifo = tmp_path / "maps" / "ab" / "x.npz"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="FIFO|not a regular file"):
        maps.load(str(fifo))
    with pytest.raises(OSError, match="FIFO|not a regular file"):
        maps.load_lowres_map(str(fifo))
