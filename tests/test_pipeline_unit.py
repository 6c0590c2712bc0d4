"""Pipeline pieces without Ray: schema, maps, listing, decoding rows, the predictor on a hand-built batch, SQL."""
from __future__ import annotations

import dataclasses
import datetime as dt
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import heic_bytes, write_parts
from PIL import Image
from tolerances import F32_ATOL, MAP_CODEC_ATOL, MAP_ROUNDTRIP_ATOL, assert_close, assert_f32_close

from pipeline.base import maps
from pipeline.base.listing import list_input, read_manifest
from pipeline.base.schema import COLUMNS, ROW_SCHEMA, ScanRow, rows_to_table, table_to_rows
from pipeline.base.sql import QueryError, run_sql
from pipeline.base.storage import StorageConfig, redact
from pipeline.base.store import resolve_ref
from pipeline.results.query import format_rows, top
from pipeline.scan.decode import load_batch, load_one
from pipeline.scan.predictor import PredictorConfig, TruForPredictor, group_batches

ST = StorageConfig()


def test_schema_is_declared_once_and_round_trips():
    assert list(COLUMNS) == [f.name for f in dataclasses.fields(ScanRow)]
    assert ROW_SCHEMA.field("score").type == pa.float64()
    assert ROW_SCHEMA.field("weights_untrained").type == pa.bool_()
    assert ROW_SCHEMA.field("scanned_at").type == pa.timestamp("us", tz="UTC")
    assert not ROW_SCHEMA.field("uri").nullable and ROW_SCHEMA.field("score").nullable
    row = ScanRow(uri="a.jpg", status="ok", score=0.25, width=3, weights_untrained=True,
                  scanned_at=dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))
    t = rows_to_table([row])
    assert t.schema == ROW_SCHEMA
    assert table_to_rows(t) == [row]


class _Evil:
    """Unpickling this would run a shell command: what a malicious checkpoint looks like."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_bad_checkpoint_fails_on_the_driver_before_ray(tmp_path, capsys):
    """A malicious or mismatched checkpoint is one line and exit 2 before Ray starts: no rows."""
    import sys

    import torch

    from jobs.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_jpeg(64, 64))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": _Evil(str(marker))}, evil)
    wrong = tmp_path / "wrong.pth.tar"
    torch.save({"state_dict": {"backbone.nope.weight": torch.zeros(3), "dncnn.0.weight": torch.zeros(1)}}, wrong)
    for ckpt, msg in ((evil, "with weights_only=True: UnpicklingError"), (wrong, "does not match the TruFor model")):
        rc = main(["scan", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint", str(ckpt),
                   "--no-download"])
        err = capsys.readouterr().err
        assert rc == 2, err
        lines = [line for line in err.splitlines() if line.startswith("trufor-scan: error:")]
        assert len(lines) == 1 and msg in lines[0] and str(ckpt) in lines[0], err
        assert len(lines[0]) < 1500 and "Traceback" not in err
        assert not (tmp_path / "out").exists()  # nothing written, no row claims the image failed
    assert not marker.exists()  # and the payload never ran
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_bad_mantranet_weights_fail_on_the_driver_before_ray(synth_ckpt, tmp_path, capsys):
    """`scan --mantranet` with a file that is not Keras weights, or a FIFO (never opened): one line, exit 2,
    before Ray starts and before anything is written."""
    import os
    import sys

    from jobs.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_jpeg(64, 64))
    (tmp_path / "text.h5").write_text("not hdf5")
    os.mkfifo(tmp_path / "fifo.h5")
    for h5, msg in ((tmp_path / "text.h5", "is not an HDF5 file"), (tmp_path / "fifo.h5", "is not a regular file")):
        rc = main(["scan", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--checkpoint", str(synth_ckpt),
                   "--no-download", "--mantranet", str(h5)])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("trufor-scan: error:")]
        assert rc == 2 and len(lines) == 1 and msg in lines[0] and "Traceback" not in err, err
        assert not (tmp_path / "out").exists()
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_user_sql_sees_the_results_and_nothing_else(results_dir, tmp_path_factory, capsys):
    """`query` is read-only and confined: no files, databases or extensions beyond the results."""
    from jobs.cli import main

    tmp_path = tmp_path_factory.mktemp("outside")
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    attempts = [f"SELECT * FROM read_csv('{secret}')", "SELECT * FROM read_csv('/etc/passwd')",
                f"SELECT * FROM glob('{tmp_path}/*')", f"COPY (SELECT * FROM results) TO '{tmp_path}/out.csv'",
                f"ATTACH '{tmp_path}/x.duckdb' AS x", "INSTALL httpfs", "LOAD httpfs",
                "SET enable_external_access = true", "RESET lock_configuration"]
    for sql in attempts:
        with pytest.raises(QueryError, match="^SQL (failed|refused): "):  # refused: not one reading statement
            run_sql(results_dir, sql)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.csv"]  # nothing written or attached
    # The results themselves stay fully queryable, and the CLI reports a refusal in one line.
    assert run_sql(results_dir, "SELECT count(*) FROM results")[1] == [(8,)]
    assert main(["query", results_dir, f"SELECT * FROM read_csv('{secret}')"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trufor-scan: error: SQL failed: ") and err.count("\n") == 1 and "hunter2" not in err


def test_maps_round_trip(tmp_path):
    """Stored stride-4 logits rebuild TruFor's full-resolution maps within float16 rounding."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    lo = rng.normal(0, 3, (1, 3, 10, 14)).astype(np.float32)  # anomaly l0, l1, confidence
    size = (37, 53)
    up = F.interpolate(torch.from_numpy(lo), size=size, mode="bilinear", align_corners=False)[0]
    ref_a, ref_c = torch.softmax(up[:2], dim=0)[1].numpy(), torch.sigmoid(up[2]).numpy()
    uri = maps.save(str(tmp_path / "maps"), "ab" + "0" * 62, lo[0, 1] - lo[0, 0], lo[0, 2], size)
    assert uri.endswith("/ab/ab" + "0" * 62 + ".npz")
    a, c = maps.load(uri)
    assert a.dtype == np.float32 and a.shape == size
    assert_close(a, ref_a, "map", MAP_ROUNDTRIP_ATOL)
    assert_close(c, ref_c, "conf", MAP_ROUNDTRIP_ATOL)
    with Image.open(maps.preview_uri(uri)) as im:  # a person can open it
        assert im.mode == "LA" and im.size == (14, 10)
    with pytest.raises(ValueError, match="equal"):
        maps.encode(lo[0, 0], lo[0, 1, :3], size)


def _jpeg(h=64, w=64, exif: dict | None = None) -> bytes:
    img = Image.fromarray(np.random.default_rng(h * w).integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    ex = Image.Exif()
    for k, v in (exif or {}).items():
        ex[k] = v
    img.save(buf, format="JPEG", exif=ex.tobytes() if exif else b"")
    return buf.getvalue()


def test_listing_recursive_with_skips_and_manifests(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "d" / "sub" / "b.PNG").write_bytes(b"x")
    (tmp_path / "d" / "notes.txt").write_text("hi")
    files = list_input(str(tmp_path / "d"), ST)
    assert [f.uri.rsplit("/", 1)[-1] for f in files] == ["a.jpg", "notes.txt", "b.PNG"]
    assert files[0].size_bytes > 0 and files[0].etag_or_mtime and files[0].skip_reason is None
    assert "not an allowed image extension" in files[1].skip_reason
    (tmp_path / "m.txt").write_text(f"# list\n{tmp_path}/d/a.jpg\n\n{tmp_path}/d/missing.jpg\n")
    assert [f.uri for f in list_input(str(tmp_path / "m.txt"), ST)] == [f"{tmp_path}/d/a.jpg", f"{tmp_path}/d/missing.jpg"]
    (tmp_path / "m.csv").write_text(f"camera,uri\nx,{tmp_path}/d/a.jpg\n")
    assert read_manifest(str(tmp_path / "m.csv"), ST) == [f"{tmp_path}/d/a.jpg"]
    pq.write_table(pa.table({"uri": [f"{tmp_path}/d/a.jpg"]}), tmp_path / "m.parquet")
    assert read_manifest(str(tmp_path / "m.parquet"), ST) == [f"{tmp_path}/d/a.jpg"]
    with pytest.raises(FileNotFoundError):
        list_input(str(tmp_path / "nope"), ST)


def test_heic_is_listed_and_decoded(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    (tmp_path / "IMG_0001.HEIC").write_bytes(heic_bytes(rgb))
    (tmp_path / "hdr.heif").write_bytes(heic_bytes(rgb, bits=10))
    files = sorted(list_input(str(tmp_path), ST), key=lambda f: f.uri)
    assert [f.skip_reason for f in files] == [None, None]
    ok, hdr = (load_one(f.uri, f.size_bytes, f.etag_or_mtime, None, ST, 10**8, 29) for f in files)
    assert ok["status"] == "ok" and ok["format"] == "HEIF" and ok["pixels"].shape == (48, 40, 3)
    assert hdr["status"] == "error" and hdr["error_kind"] == "input" and "10-bit HEIF" in hdr["error"]


@pytest.mark.parametrize("name,data,msg", [
    ("zero.jpg", b"", "empty file"),
    ("text.jpg", b"hello, I am text", "not an image in an allowed format"),
    ("trunc.jpg", None, "cannot decode"),
    ("tiny.jpg", "tiny", "too small"),
    ("deep.png", "16bit", "more than 8 bits per sample"),
    ("missing.jpg", "missing", "FileNotFoundError"),
])
def test_bad_files_become_error_rows(tmp_path, name, data, msg):
    p = tmp_path / name
    if data is None:
        p.write_bytes(_jpeg(80, 80)[:400])
    elif data == "tiny":
        p.write_bytes(_jpeg(20, 40))
    elif data == "16bit":
        buf = io.BytesIO()
        Image.fromarray(np.full((40, 40), 50000, np.uint16)).save(buf, format="PNG")
        p.write_bytes(buf.getvalue())
    elif data != "missing":
        p.write_bytes(data)
    row = load_one(str(p), None, None, None, ST, 10**8, 29)
    assert row["status"] == "error" and msg in row["error"] and str(p) in row["error"]
    assert row["pixels"].size == 0


def test_good_file_row_has_hash_and_exif(tmp_path):
    import hashlib

    data = _jpeg(48, 72, {271: "Canon", 272: "EOS 5D", 305: "GIMP 2.10", 274: 6})
    p = tmp_path / "ok.jpg"
    p.write_bytes(data)
    batch = load_batch({"uri": np.array([str(p), str(p) + ".txt"], dtype=object),
                        "size_bytes": np.array([len(data), np.nan]), "etag_or_mtime": np.array(["e1", None], dtype=object),
                        "skip_reason": np.array([None, "skipped: .txt"], dtype=object),
                        "error": np.array([None, None], dtype=object), "error_kind": np.array([None, None], dtype=object)},
                       ST, 10**8, 29)
    assert batch["status"] == ["ok", "skipped"]
    assert batch["sha256"][0] == hashlib.sha256(data).hexdigest()
    assert (batch["width"][0], batch["height"][0], batch["format"][0]) == (72, 48, "JPEG")
    assert (batch["exif_make"][0], batch["exif_model"][0], batch["exif_software"][0], batch["exif_orientation"][0]) == \
        ("Canon", "EOS 5D", "GIMP 2.10", 6)
    assert batch["pixels"][0].shape == (48, 72, 3) and batch["error"][1] == "skipped: .txt"


def test_group_batches():
    shapes = [(10, 10), (20, 20), (10, 10), (10, 10), (30, 30)]
    assert group_batches(shapes, 2, 10**6) == [[0, 2], [3], [1], [4]]
    assert group_batches(shapes, 4, 250) == [[0, 2], [3], [1], [4]]  # pixel budget: 2 of 100 px


def test_redact_hides_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SuperSecretValue42")
    s = redact("GET https://x/?X-Amz-Signature=abcdef&a=1 failed; key SuperSecretValue42 aws_secret_access_key=zzz")
    assert "abcdef" not in s and "SuperSecretValue42" not in s and "zzz" not in s


# ---- predictor on a hand-built batch (no Ray) --------------------------------------------------


def test_predictor_hand_built_batch(shared, synth_ckpt, model, tmp_path):
    import torch
    from conftest import IMAGES

    from trufor_core.image import decode_rgb, to_model_input

    rgb, _ = decode_rgb(IMAGES / "tampered2.png")  # 256x256
    flipped = np.ascontiguousarray(rgb[::-1])
    pix = np.empty(4, dtype=object)
    pix[:] = [rgb, flipped, np.zeros((0, 0, 3), np.uint8), rgb]
    batch = {"uri": np.array(["a.png", "b.png", "bad.png", "c.png"], dtype=object),
             "status": np.array(["ok", "ok", "error", "ok"], dtype=object),
             "error": np.array([None, None, "broken", None], dtype=object),
             "sha256": np.array(["a" * 64, "b" * 64, None, "a" * 64], dtype=object),
             "size_bytes": np.array([1, 2, 3, 4]), "pixels": pix}
    cfg = PredictorConfig(checkpoint=str(synth_ckpt), output_root=str(tmp_path), run_id="r1",
                          code_version="test", batch_size=2, torch_threads=2)
    pred = TruForPredictor(cfg)
    raw = pred(batch)
    # The model stage stores nothing: it hands each scored image's logits to the map stage.
    assert raw.schema.names == [*ROW_SCHEMA.names, maps.PAYLOAD_COLUMN]
    assert raw.column(maps.PAYLOAD_COLUMN).null_count == 1 and not (tmp_path / "maps").exists()
    assert raw.column("map_uri").null_count == 4
    # A map store that fails: those rows become transient errors with no score (never a row
    # pointing to a map that is not there); then the real map stage.
    (tmp_path / "not-a-dir").write_text("x")
    failed = table_to_rows(maps.store_maps(raw, str(tmp_path / "not-a-dir")))
    assert [(r.status, r.error_kind) for r in failed] == [("error", "transient")] * 2 + [("error", None), ("error", "transient")]
    assert all(r.score is None and r.map_uri is None for r in failed)
    assert failed[0].error.startswith("writing the map failed: ") and "\n" not in failed[0].error
    table = maps.store_maps(raw, cfg.output_root)
    assert table.schema == ROW_SCHEMA
    rows = table_to_rows(table)
    assert [r.status for r in rows] == ["ok", "ok", "error", "ok"]
    assert rows[2].error == "broken" and rows[2].score is None
    assert all(r.weights_untrained and r.run_id == "r1" and r.model_name for r in rows)
    assert all(r.noise_anomaly_score is None and r.noise_anomaly_map_uri is None for r in rows)  # off by default
    # The kernel family float32 rounding depends on, e.g. "cpu (AVX512, 2 threads)".
    assert rows[0].device.startswith(f"cpu ({torch.backends.cpu.get_cpu_capability()}, ")
    assert rows[0].device.endswith(", 2 threads)")
    assert rows[0].precision == "fp32"  # the default: exact float32, recorded in every row
    assert rows[0].backend.startswith("openvino ") and rows[0].steps == 1  # the CPU default: one compiled call
    with torch.inference_mode():
        ref = model(to_model_input(rgb)).results()[0]
    # The predictor batches two images (the reference runs one): float32 kernels may sum in another
    # order, so the float32 tolerances apply.
    assert_f32_close(rows[0].score, ref.score, "score")
    assert_f32_close(rows[3].score, ref.score, "score")
    assert rows[0].map_uri == rows[3].map_uri  # content-addressed: one map per distinct file
    a, c = maps.load(resolve_ref(str(tmp_path), rows[0].map_uri))
    assert_close(a, ref.anomaly_map, "stored map", MAP_CODEC_ATOL + F32_ATOL["map"])
    assert_close(c, ref.confidence_map, "stored conf", MAP_CODEC_ATOL + F32_ATOL["conf"])
    assert_f32_close(rows[0].conf_mean, ref.pooled[2], "pooled")
    # A pixel can only change sides of 0.5 where the reference lies within the map tolerance of it.
    am, cm, tm, tc = ref.anomaly_map, ref.confidence_map, F32_ATOL["map"], F32_ATOL["conf"]
    undecided = float(np.mean((np.abs(am - 0.5) <= tm) | (np.abs(cm - 0.5) <= tc)))
    assert abs(rows[0].frac_anom_conf - float(np.mean((am > .5) & (cm > .5)))) <= undecided
    assert_close(rows[0].max_anom_conf, np.max(am * cm), "max_anom_conf", tm + tc)

    # A model failure becomes an error row for that image only; the predictor keeps working.
    real = pred.runner

    def failing(x, ev, watch=None):
        if x.shape[0] > 1 or float(x[0, 0, 0, 0]) == float(flipped[0, 0, 0]) / 256:
            raise RuntimeError("boom")
        return real(x, ev, watch)

    failing.steps = real.steps
    pred.runner = failing
    rows = table_to_rows(pred(batch))
    assert [r.status for r in rows] == ["ok", "error", "error", "ok"]
    assert "inference failed: RuntimeError: boom" in rows[1].error


# ---- SQL ---------------------------------------------------------------------------------------


@pytest.fixture()
def results_dir(tmp_path):
    rows = [ScanRow(uri=f"img{i}.jpg", status="ok", score=s, frac_anom_conf=0.1, max_anom_conf=0.5,
                    map_uri=f"maps/{i}.png", run_id="r", weights_untrained=True,
                    scanned_at=dt.datetime(2026, 11, d, tzinfo=dt.timezone.utc))
            for i, (s, d) in enumerate([(0.9, 20), (0.4, 20), (0.7, 21), (0.95, 21)])]
    rows.append(ScanRow(uri="bad.jpg", status="error", error="broken", run_id="r"))
    # img0 scanned again later with a lower score: top() must use the latest scan.
    rows.append(ScanRow(uri="img0.jpg", status="ok", score=0.6, run_id="r2", scanned_at=dt.datetime(2026, 11, 21, 5, tzinfo=dt.timezone.utc)))
    # img4 scored high once, then its latest scan failed: it must not show as a candidate.
    rows.append(ScanRow(uri="img4.jpg", status="ok", score=0.99, run_id="r", scanned_at=dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)))
    rows.append(ScanRow(uri="img4.jpg", status="error", error="cannot decode", run_id="r2",
                        scanned_at=dt.datetime(2026, 11, 21, 5, tzinfo=dt.timezone.utc)))
    for run, date, sel in (("r", "2026-11-20", [0, 1, 4, 6]), ("r2", "2026-11-21", [2, 3, 5, 7])):
        write_parts(tmp_path, run, date, [rows_to_table([rows[i] for i in sel])])
    return str(tmp_path)


def test_query_and_top(results_dir):
    cols, rows = run_sql(results_dir, "SELECT status, count(*) FROM results GROUP BY status ORDER BY status")
    assert rows == [("error", 2), ("ok", 6)]
    cols, rows = run_sql(results_dir, "SELECT uri FROM results WHERE scan_date = ? ORDER BY uri", ["2026-11-20"])
    assert [r[0] for r in rows] == ["bad.jpg", "img0.jpg", "img1.jpg", "img4.jpg"]
    cols, rows = run_sql(results_dir, "SELECT uri, status, score FROM latest ORDER BY uri")
    assert rows == [("bad.jpg", "error", None), ("img0.jpg", "ok", 0.6), ("img1.jpg", "ok", 0.4),
                    ("img2.jpg", "ok", 0.7), ("img3.jpg", "ok", 0.95), ("img4.jpg", "error", None)]
    cols, rows = top(results_dir, k=10, min_score=0.5)
    assert [r[0] for r in rows] == ["img3.jpg", "img2.jpg", "img0.jpg"]  # not img4: its latest scan failed
    assert rows[-1][1] == 0.6  # latest scan of img0
    cols, rows = top(results_dir, k=1, min_score=0.0, since=dt.date(2026, 11, 21))
    assert [r[0] for r in rows] == ["img3.jpg"] and "map_uri" in cols
    # A hostile value is data, not SQL.
    cols, rows = run_sql(results_dir, "SELECT count(*) FROM results WHERE uri = ?", ["x' OR '1'='1"])
    assert rows == [(0,)]
    assert '"uri": "img3.jpg"' in format_rows(*top(results_dir, k=1), "json")
    assert format_rows(*top(results_dir, k=1), "csv").splitlines()[1].startswith("img3.jpg,0.95")
    assert "(1 rows)" in format_rows(*top(results_dir, k=1), "table")
    with pytest.raises(FileNotFoundError, match="no scan results"):
        run_sql(str(results_dir) + "/nothing", "SELECT 1")
    with pytest.raises(QueryError, match=r"^SQL failed: .*nosuchcolumn") as e:
        run_sql(results_dir, "SELECT nosuchcolumn FROM results")
    assert "\n" not in str(e.value)


def test_predictor_noise_anomaly_second_opinion(shared, synth_ckpt, model, tmp_path):
    """`scan --noise-anomaly`: a fitted model on the checkpoint's own Noiseprint++ adds a score and a
    stored map per image; one fitted on another network is refused."""
    from conftest import IMAGES

    from noiseprint_lab.localizers import fit_noise_anomaly
    from trufor_core.checkpoint import sha256_file
    from trufor_core.image import decode_rgb

    rgb, _ = decode_rgb(IMAGES / "tampered2.png")  # 256x256
    odd, _ = decode_rgb(IMAGES / "synthetic_odd_333x517.png")
    fitted = fit_noise_anomaly(model.dncnn, [rgb[:128, :128], rgb[128:, 128:]], dims=8, window=8)
    path = fitted.save(tmp_path / "na.pt")
    pix = np.empty(2, dtype=object)
    pix[:] = [rgb, odd]
    batch = {"uri": np.array(["a.png", "odd.png"], dtype=object), "status": np.array(["ok", "ok"], dtype=object),
             "error": np.array([None, None], dtype=object), "sha256": np.array(["a" * 64, "c" * 64], dtype=object),
             "size_bytes": np.array([1, 2]), "pixels": pix}
    cfg = PredictorConfig(checkpoint=str(synth_ckpt), output_root=str(tmp_path), run_id="na",
                          code_version="test", noise_anomaly=str(path))
    rows = table_to_rows(maps.store_maps(TruForPredictor(cfg)(batch), cfg.output_root))
    for r, img in zip(rows, (rgb, odd)):
        heat = fitted.heatmap(model.dncnn, img)
        assert r.noise_anomaly_score == pytest.approx(float(heat.max()), rel=1e-5)
        assert r.noise_anomaly_model == sha256_file(path) and r.score is not None  # TruFor's own score unchanged
        stored = maps.load_lowres_map(resolve_ref(str(tmp_path), r.noise_anomaly_map_uri))
        assert stored.shape == img.shape[:2] and r.noise_anomaly_map_uri.endswith(f".na-{r.noise_anomaly_model[:16]}.npz")
        # Stored as the heat map's 4 x 4 cell means in float16 (rounding ~5e-4 relative).
        with np.load(resolve_ref(str(tmp_path), r.noise_anomaly_map_uri)) as z:
            low = z["noise"].astype(np.float32)
        h, w = heat.shape
        pad = np.pad(heat, ((0, -h % 4), (0, -w % 4)), mode="edge")
        want = pad.reshape(pad.shape[0] // 4, 4, pad.shape[1] // 4, 4).mean((1, 3))
        np.testing.assert_allclose(low, want, rtol=2e-3)
    # (Off by default: test_predictor_hand_built_batch checks those columns stay NULL.)
    # Fitted on another network's features: refused before any image is scored.
    import copy

    import torch

    other = copy.deepcopy(model.dncnn)
    with torch.no_grad():
        other[0].weight.add_(1e-3)
    fit_noise_anomaly(other, [rgb[:64, :64]], dims=4).save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="fitted on the features of another Noiseprint"):
        TruForPredictor(PredictorConfig(checkpoint=str(synth_ckpt), output_root=str(tmp_path / "m3"), run_id="x",
                                        code_version="t", noise_anomaly=str(tmp_path / "other.pt")))


def test_predictor_mantranet_second_opinion(shared, synth_ckpt, mantranet_h5, tmp_path):
    """`scan --mantranet`: ManTra-Net's score (its map's maximum, equal to `predict --model mantranet`'s) and
    its stored map (4 x 4 cell means, float16) per image beside TruFor's own outputs, in the same budget."""
    import torch
    from conftest import IMAGES

    from mantranet_core import load_mantranet, to_input
    from trufor_core.image import decode_rgb

    rgb, _ = decode_rgb(IMAGES / "pristine1.jpg")
    pix = np.empty(1, dtype=object)
    pix[:] = [rgb]
    batch = {"uri": np.array(["p.jpg"], dtype=object), "status": np.array(["ok"], dtype=object),
             "error": np.array([None], dtype=object), "sha256": np.array(["b" * 64], dtype=object),
             "size_bytes": np.array([1]), "pixels": pix}
    cfg = PredictorConfig(checkpoint=str(synth_ckpt), output_root=str(tmp_path), run_id="mt", code_version="test",
                          mantranet=str(mantranet_h5), backend="eager")  # eager: no OpenVINO conversion to wait for
    (r,) = table_to_rows(maps.store_maps(TruForPredictor(cfg)(batch), cfg.output_root))
    m, info = load_mantranet(mantranet_h5)
    with torch.inference_mode():
        mask = m(to_input(rgb)).mask[0].numpy()
    assert r.status == "ok" and r.score is not None and r.mantranet_weights == info.sha256
    assert r.mantranet_score == pytest.approx(float(mask.max()), abs=1e-6)
    assert r.mantranet_map_uri.endswith(f".mt-{info.sha256[:16]}.npz")
    stored = maps.load_lowres_map(resolve_ref(str(tmp_path), r.mantranet_map_uri))
    assert stored.shape == rgb.shape[:2]
    with np.load(resolve_ref(str(tmp_path), r.mantranet_map_uri)) as z:
        np.testing.assert_allclose(z["noise"].astype(np.float32), maps.cell_means(mask), atol=1e-3)
    # the steps of both detectors are counted (progress lines and the time budget cover both)
    from mantranet_core import count_steps
    assert r.steps > count_steps(*rgb.shape[:2])
