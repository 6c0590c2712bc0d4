"""Calibrated verdicts (fast tier): thresholds from pristine references, exact intervals, the
inconclusive rule, refusal of other weights, and the sandbox around the source expression.

The mechanics only: these rows are made up, as the README says of the untrained test weights."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from conftest import write_parts
from jobs.cli import main as cli_main
from pipeline.base.schema import ScanRow, rows_to_table
from pipeline.base.sql import QueryError, run_sql
from pipeline.results.calibration import (CalibrateConfig, CalibrationError, calibrate, clopper_pearson, connector,
                                          load_calibration, min_reference_size, pick_threshold, top_calibrated)

W = "a" * 64


def test_clopper_pearson_and_the_rule_of_three():
    lo, hi = clopper_pearson(0, 300)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 300), rel=1e-9)  # closed form for k = 0
    lo, hi = clopper_pearson(5, 100)
    assert lo == pytest.approx(0.01643, abs=1e-4) and hi == pytest.approx(0.11284, abs=1e-4)  # published table values
    assert min_reference_size(0.01) == 300 and min_reference_size(0.05) == 60


def test_threshold_keeps_the_false_positive_rate_at_or_under_the_target():
    rng = np.random.default_rng(0)
    for n, target in ((1000, 0.01), (250, 0.05), (37, 0.1), (10, 0.01)):
        scores = rng.random(n).tolist()
        t, fp = pick_threshold(scores, target)
        assert fp == sum(s > t for s in scores) <= target * n
        assert sum(s >= t for s in scores) > target * n  # and no lower threshold would do: t is the tightest
    t, fp = pick_threshold([0.2] * 50 + [0.9], 0.01)  # ties: flagged means strictly above
    assert (t, fp) == (0.9, 0)


def _row(uri, score, *, side=512, bpp=0.5, conf=1.0, weights=W, day=20):
    return ScanRow(uri=uri, status="ok", score=score, width=side, height=side, size_bytes=int(bpp * side * side),
                   conf_mean=conf, weights_sha256=weights, run_id="r",
                   scanned_at=dt.datetime(2026, 11, day, tzinfo=dt.timezone.utc))


@pytest.fixture()
def calibrated(tmp_path):
    """A crawl of two platforms: camera originals score low, recompressed reposts higher."""
    rng = np.random.default_rng(1)
    rows, ref, forged = [], [], []
    for i, s in enumerate(rng.uniform(0.0, 0.3, 400)):
        rows.append(_row(f"s3://crawl/camera/ref{i}.jpg", float(s), conf=float(rng.uniform(0.5, 2.0))))
        ref.append((rows[-1].uri, "camera"))
    for i, s in enumerate(rng.uniform(0.1, 0.6, 80)):
        rows.append(_row(f"s3://crawl/social/ref{i}.jpg", float(s), bpp=0.1, conf=float(rng.uniform(0.5, 2.0))))
        ref.append((rows[-1].uri, "social"))
    for i, s in enumerate(rng.uniform(0.2, 0.9, 40)):
        rows.append(_row(f"s3://crawl/camera/forged{i}.jpg", float(s)))
        forged.append((rows[-1].uri, "camera"))
    rows += [_row("s3://crawl/camera/new_high.jpg", 0.95), _row("s3://crawl/social/new_mid.jpg", 0.45, bpp=0.1),
             _row("s3://crawl/camera/tiny_high.jpg", 0.97, side=64),
             _row("s3://crawl/camera/unsure_high.jpg", 0.96, conf=-3.0),
             _row("s3://crawl/forum/x.jpg", 0.99), ScanRow(uri="s3://crawl/camera/bad.jpg", status="error", error="x")]
    write_parts(tmp_path / "out", "r", "2026-11-20", [rows_to_table(rows)])
    (tmp_path / "ref.csv").write_text("uri,source\n" + "".join(f"{u},{s}\n" for u, s in ref)
                                      + "s3://crawl/camera/never_scanned.jpg,camera\n")
    (tmp_path / "forged.csv").write_text("uri,source\n" + "".join(f"{u},{s}\n" for u, s in forged))
    cfg = CalibrateConfig(output=str(tmp_path / "out"), reference=str(tmp_path / "ref.csv"), target_fpr=0.01,
                          source_of="regexp_extract(uri, '^s3://crawl/([^/]+)/', 1)", forged=str(tmp_path / "forged.csv"))
    return cfg, calibrate(cfg)


def test_calibration_per_source(calibrated):
    cfg, cal = calibrated
    by = {s["source"]: s for s in cal["sources"]}
    assert set(by) == {"camera", "social"} and cal["weights_sha256"] == W
    cam, soc = by["camera"], by["social"]
    assert cam["n"] == 400 and cam["false_positives"] <= 4 and not cam["too_small_for_target"]
    assert soc["n"] == 80 and soc["too_small_for_target"] and soc["threshold"] > cam["threshold"]
    assert cam["fpr_ci95"] == list(clopper_pearson(cam["false_positives"], 400))
    assert cam["forged_n"] == 40 and 0 < cam["tpr"] < 1
    assert any("'social': 80 pristine images cannot show" in w for w in cal["warnings"])
    assert any("1 of 481 reference images have no ok row" in w for w in cal["warnings"])
    # Stored, versioned, found again as the newest.
    stored = load_calibration("latest", cfg.output, cfg.storage())
    assert stored["id"] == cal["id"] and json.loads(open(cal["path"]).read())["calibration_version"] == 1


def test_verdicts_in_sql_and_top(calibrated):
    cfg, cal = calibrated
    cols, rows = run_sql(cfg.output, "SELECT uri, source, verdict, verdict_reason FROM latest WHERE uri NOT LIKE '%ref%' "
                         "AND uri NOT LIKE '%forged%' ORDER BY uri", connector=connector(cal))
    v = {r[0].rsplit("/", 1)[1]: r[1:] for r in rows}
    assert v["new_high.jpg"][:2] == ("camera", "flagged") and v["new_high.jpg"][2].startswith("score 0.950 > ")
    assert v["new_mid.jpg"][1] == "clean"  # 0.45 is ordinary on the social platform
    assert v["tiny_high.jpg"][1:] == ("inconclusive", "smaller than the reference images of its source")
    assert v["unsure_high.jpg"][1:] == ("inconclusive", "less confident than the reference images of its source")
    assert v["x.jpg"][1:] == ("inconclusive", "no calibration for source forum")
    assert v["bad.jpg"][1] is None
    cols, rows = top_calibrated(cfg.output, cal, k=5)
    assert rows[0][0] == "s3://crawl/camera/new_high.jpg" and all(r[cols.index("verdict")] == "flagged" for r in rows)


def test_calibration_cli_and_refusals(calibrated, tmp_path, capsys):
    cfg, cal = calibrated
    assert cli_main(["top", cfg.output, "--calibrated", "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got and got[0]["uri"] == "s3://crawl/camera/new_high.jpg" and got[0]["source"] == "camera"
    # Rows scored with other weights: the calibration is refused.
    write_parts(cfg.output, "r2", "2026-11-21", [rows_to_table([_row("s3://crawl/camera/late.jpg", 0.5, weights="b" * 64,
                                                                     day=21)])])
    with pytest.raises(CalibrationError, match="was measured with weights aaaaaaaaaaaa .* 1 rows were scored with"):
        run_sql(cfg.output, "SELECT 1", connector=connector(cal))
    # The source expression is user SQL: it runs in the same sandbox as `query`.
    bad = dict(cal, source_of="(SELECT content FROM read_text('/etc/hostname'))")
    with pytest.raises(QueryError, match="source expression .* failed: Permission Error: Cannot access file"):
        run_sql(cfg.output, "SELECT 1", connector=connector(bad))
    with pytest.raises(CalibrationError, match=r"--source-of \(or --sources\) must say"):
        calibrate(CalibrateConfig(output=cfg.output, reference=cfg.reference))
    with pytest.raises(ValueError, match="--target-fpr must be in"):
        CalibrateConfig(output="o", reference="r", target_fpr=0.7)


def test_sources_from_a_manifest_column(calibrated, tmp_path):
    """Sources named by a manifest (uri, source) instead of a uri pattern: the default rule then."""
    cfg, _ = calibrated
    _, rows = run_sql(cfg.output, "SELECT uri FROM latest WHERE status = 'ok' ORDER BY uri")
    platform = {u: ("platform_x" if "/social/" in u else "camera_x") for (u,) in rows}
    (tmp_path / "sources.csv").write_text("uri,source\n" + "".join(f"{u},{s}\n" for u, s in platform.items()))
    (tmp_path / "ref2.csv").write_text("uri\n" + "".join(f"{u}\n" for u in platform if "/ref" in u))
    cal = calibrate(CalibrateConfig(output=cfg.output, reference=str(tmp_path / "ref2.csv"),
                                    sources=str(tmp_path / "sources.csv")))
    assert cal["source_of"] == "manifest_source" and {s["source"] for s in cal["sources"]} == {"camera_x", "platform_x"}
    _, got = run_sql(cfg.output, "SELECT uri, source, verdict FROM latest WHERE uri LIKE '%new_%' ORDER BY uri",
                     connector=connector(cal))
    assert [(r[1], r[2]) for r in got] == [("camera_x", "flagged"), ("platform_x", "clean")]
    (tmp_path / "twice.csv").write_text("uri,source\na,x\na,y\n")
    with pytest.raises(CalibrationError, match="lists 'a' more than once"):
        calibrate(CalibrateConfig(output=cfg.output, reference=str(tmp_path / "ref2.csv"),
                                  sources=str(tmp_path / "twice.csv")))


def test_an_edited_calibration_is_refused(calibrated, tmp_path):
    """A calibration file read back is verified: edited content, a sources manifest outside OUTPUT, a FIFO."""
    import os

    cfg, cal = calibrated
    path = cal["path"]
    body = json.loads(open(path).read())
    body["sources"][0]["threshold"] = 0.0  # every image of that source flagged
    open(path, "w").write(json.dumps(body))
    with pytest.raises(CalibrationError, match="was edited after it was made"):
        load_calibration("latest", cfg.output, cfg.storage())
    assert cli_main(["top", cfg.output, "--calibrated"]) == 2
    # Even with a recomputed id, a sources manifest must be a file under OUTPUT/_calibrations/.
    from pipeline.results.calibration import content_id

    for where in ("/etc/passwd", "../../x.csv", str(tmp_path / "fifo.csv")):
        body = json.loads(open(path).read())
        body["sources"][0]["threshold"], body["sources_manifest"] = cal["sources"][0]["threshold"], where
        body["id"] = content_id(body)
        open(path, "w").write(json.dumps(body))
        with pytest.raises(CalibrationError, match="is not a file under OUTPUT/_calibrations/"):
            load_calibration(path, cfg.output, cfg.storage())
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(CalibrationError, match="not a regular file"):
        load_calibration(str(tmp_path / "fifo.json"), cfg.output, cfg.storage())
    from pipeline.base.listing import read_manifest_table
    from pipeline.base.storage import StorageConfig

    os.mkfifo(tmp_path / "fifo.csv")
    with pytest.raises(ValueError, match="not a regular file"):
        read_manifest_table(str(tmp_path / "fifo.csv"), StorageConfig())
