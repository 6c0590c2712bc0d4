"""Integration tier: real Ray (local, and a 2-node local cluster), a real S3 endpoint (moto server), DuckDB."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import IMAGES, REPO, S3_KEY, S3_SECRET, C2paTestSigner, heic_bytes
from page_check import browser_missing, check_report
from PIL import Image
from tolerances import F32_ATOL, MAP_CODEC_ATOL, assert_close, assert_f32_close

from pipeline.base import maps
from pipeline.base.sql import run_sql
from pipeline.base.storage import StorageConfig
from pipeline.base.store import resolve_ref
from pipeline.results.query import top
from pipeline.scan.driver import RAY_ENV_DEFAULTS, ScanConfig, run_scan

sys.path.insert(0, str(REPO / "bench"))
pytestmark = pytest.mark.slow



def _img(h, w, seed, fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


_SIGNER: list = []


def signer() -> C2paTestSigner:
    """One test CA per module run (making keys takes a moment)."""
    if not _SIGNER:
        _SIGNER.append(C2paTestSigner())
    return _SIGNER[0]


def make_archive(root: Path) -> dict[str, str]:
    """Fixture images, generated images of several sizes, and bad files; returns name -> expected status."""
    (root / "sub").mkdir(parents=True)
    shutil.copy(IMAGES / "pristine1.jpg", root / "pristine1.jpg")
    shutil.copy(IMAGES / "tampered2.png", root / "sub" / "tampered2.png")
    shutil.copy(IMAGES / "synthetic_odd_333x517.png", root / "synthetic_odd_333x517.png")
    (root / "gen_64x96_a.png").write_bytes(_img(64, 96, 1))
    (root / "gen_64x96_b.png").write_bytes(_img(64, 96, 2))  # same shape: batched together
    (root / "gen_64x96_dup.png").write_bytes(_img(64, 96, 1))  # same bytes as _a: one shared map
    (root / "sub" / "gen_45x33.webp").write_bytes(_img(45, 33, 3, "WEBP"))
    with Image.open(IMAGES / "pristine1.jpg") as im:  # a repost: resized and recompressed (a near-copy)
        im.convert("RGB").resize((288, 192), Image.Resampling.BICUBIC).save(root / "sub" / "pristine1_repost.jpg",
                                                                         quality=80)
    # Content credentials signed by a test CA: valid (trusted when the scan is given the CA).
    (root / "signed_camera.jpg").write_bytes(signer().sign(_img(48, 64, 6, "JPEG")))
    rgb = np.random.default_rng(5).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    (root / "sub" / "phone_40x56.heic").write_bytes(heic_bytes(rgb))  # decoded in the workers: opener registered
    (root / "hdr_10bit.heic").write_bytes(heic_bytes(rgb, bits=10))  # refused, never shifted to 8 bits
    (root / "zero.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes((IMAGES / "pristine1.jpg").read_bytes()[:2000])
    (root / "text.jpg").write_text("definitely not a JPEG")
    (root / "tiny.png").write_bytes(_img(20, 20, 4))
    ico = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ico, format="ICO")
    (root / "icon.ico").write_bytes(ico.getvalue())  # unsupported format and extension: skipped
    (root / "icon_named.png").write_bytes(ico.getvalue())  # unsupported format behind an image extension
    ok = ["pristine1.jpg", "sub/tampered2.png", "synthetic_odd_333x517.png", "gen_64x96_a.png", "gen_64x96_b.png",
          "gen_64x96_dup.png", "sub/gen_45x33.webp", "sub/phone_40x56.heic",
          "sub/pristine1_repost.jpg", "signed_camera.jpg"]
    err = ["hdr_10bit.heic", "zero.jpg", "truncated.jpg", "text.jpg", "tiny.png", "icon_named.png"]
    return {**{k: "ok" for k in ok}, **{k: "error" for k in err}, "icon.ico": "skipped"}


@pytest.fixture(scope="module")
def ray_env(tmp_path_factory):
    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = S3_KEY, S3_SECRET
    import ray

    yield ray
    if ray.is_initialized():
        ray.shutdown()


def _short_tmp() -> str:
    """Ray's socket paths must stay under 108 bytes: pytest's tmp paths are too long."""
    return tempfile.mkdtemp(prefix="tfr", dir="/tmp")


def _local_ray(ray):
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False, log_to_driver=False,
             _temp_dir=_short_tmp())


@pytest.fixture(scope="module")
def reference_scores(shared, model, tmp_path_factory):
    """What `predict` (the same model, one image at a time) gives for each good image."""
    import torch

    from trufor_core.image import decode_rgb, to_model_input

    root = tmp_path_factory.mktemp("ref")
    expected = make_archive(root)
    out = {}
    for name, status in expected.items():
        if status == "ok":
            rgb, _ = decode_rgb(root / name)
            with torch.inference_mode():
                out[name] = model(to_model_input(rgb)).results()[0]
    return out


def readme_snippet_rows(out) -> list[tuple]:
    """The README's plain-DuckDB candidates query, as written there, run by a Python that imports no
    project code (only duckdb and the delta extension's pip package)."""
    text = (REPO / "README.md").read_text()
    sql = re.search(r"<!-- plain-duckdb -->\s*```sql\n(.*?)```", text, re.S).group(1)
    sql = sql.replace("OUTPUT", str(out)).replace(">= 0.5", ">= 0.0")
    code = ("import duckdb, importlib.util, json, os, sys; "
            "ext = os.path.join(importlib.util.find_spec('duckdb_ext').submodule_search_locations[0], 'extensions'); "
            "con = duckdb.connect(config={'extension_directory': ext, 'autoinstall_known_extensions': False}); "
            "print(json.dumps(con.execute(sys.stdin.read()).fetchall()))")
    p = subprocess.run([sys.executable, "-c", code], input=sql.replace("INSTALL delta;", ""), capture_output=True,
                       text=True, timeout=120, cwd="/")
    assert p.returncode == 0, p.stderr
    assert "pipeline" not in p.stderr
    return [tuple(r) for r in json.loads(p.stdout)]


def _read(uri: str, storage: StorageConfig) -> bytes:
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def _check_results(out_uri: str, expected: dict, ref: dict, uri_of, storage: StorageConfig, run_id: str):
    cols, rows = run_sql(out_uri, "SELECT * FROM results WHERE run_id = ? ORDER BY uri", [run_id], storage)
    recs = [dict(zip(cols, r)) for r in rows]
    by_uri = {r["uri"]: r for r in recs}
    assert len(recs) == len(expected) == len(by_uri)  # exactly one row per input
    for name, status in expected.items():
        r = by_uri[uri_of(name)]
        assert r["status"] == status, (name, r["error"])
        assert r["weights_untrained"] is True or status == "skipped"
        if status == "ok":
            res = ref[name]
            # The actors batch images and run on other threads than the reference: float32 kernels
            # may sum in another order, so the float32 tolerances apply, not equality.
            assert_f32_close(r["score"], res.score, "score", label=name)
            assert_f32_close(r["anom_mean"], res.pooled[6], "pooled", label=name)
            assert (r["height"], r["width"]) == res.imgsize
            a, c = maps.load(resolve_ref(out_uri, r["map_uri"]), storage)
            assert_close(a, res.anomaly_map, f"{name}: stored map", MAP_CODEC_ATOL + F32_ATOL["map"])
            assert_close(c, res.confidence_map, f"{name}: stored conf", MAP_CODEC_ATOL + F32_ATOL["conf"])
            assert r["map_codec"] == maps.MAP_CODEC and len(r["sha256"]) == 64 and r["error"] is None
            assert len(r["phash"]) == 16 and int(r["phash"], 16) >= 0
            if name == "signed_camera.jpg":  # read in the decode tasks, offline
                assert r["c2pa_state"] in ("valid", "trusted") and r["c2pa_actions"] == "c2pa.created"
                assert r["c2pa_claim_generator"] == "trufor-scan tests 1.0"
            else:
                assert r["c2pa_state"] == "none" and r["c2pa_actions"] is None
            with Image.open(io.BytesIO(_read(resolve_ref(out_uri, r["preview_uri"]), storage))) as im:  # a person can open it
                assert im.format == "PNG" and im.size == ((res.imgsize[1] + 3) // 4, (res.imgsize[0] + 3) // 4)
            assert r["elapsed_ms"] > 0 and r["torch_version"] and r["code_version"]
        else:
            assert r["error"] and r["score"] is None and r["phash"] is None
    errs = {n: by_uri[uri_of(n)]["error"] for n, s in expected.items() if s != "ok"}
    assert "empty file" in errs["zero.jpg"] and "cannot decode" in errs["truncated.jpg"]
    assert "not an image in an allowed format" in errs["text.jpg"] and "too small" in errs["tiny.png"]
    assert "not an image in an allowed format" in errs["icon_named.png"]
    assert "not an allowed image extension" in errs["icon.ico"]
    assert by_uri[uri_of("gen_64x96_a.png")]["map_uri"] == by_uri[uri_of("gen_64x96_dup.png")]["map_uri"]
    # Credentials never reach the results.
    assert not any(S3_SECRET in str(v) or S3_KEY in str(v) for r in recs for v in r.values())
    return recs


def test_scan_local_folder_and_query(ray_env, reference_scores, synth_ckpt, tmp_path, capsys):
    root = tmp_path / "archive"
    expected = make_archive(root)
    _local_ray(ray_env)
    out = tmp_path / "out"
    (tmp_path / "anchors.pem").write_text(signer().ca_pem)
    s = run_scan(ScanConfig(input=str(root), output=str(out), checkpoint=str(synth_ckpt), run_id="local1", batch_size=2,
                            allow_download=False, c2pa_trust_anchors=str(tmp_path / "anchors.pem")), log=lambda m: None)
    assert (s.listed, s.ok, s.errors, s.skipped) == (17, 10, 6, 1)
    assert s.results_version is not None and (out / "results" / "_delta_log").is_dir()
    _check_results(str(out), expected, reference_scores, lambda n: str(root / n), StorageConfig(), "local1")
    cols, rows = top(str(out), k=3, min_score=0.0)
    assert len(rows) == 3 and rows[0][1] >= rows[1][1] >= rows[2][1]
    assert all(r[4].endswith(".npz") and r[5].endswith(".png") for r in rows)
    assert all(r[8] is True for r in rows)  # weights_untrained shown next to every candidate
    # The README's plain-DuckDB query (delta_scan, no project code) reads the same rows.
    plain = readme_snippet_rows(out)
    assert [r[0] for r in plain[:3]] == [r[0] for r in rows] and len(plain) == 10
    # Near-copies: the same bytes twice, and a resized, recompressed repost of pristine1.
    from jobs.cli import main as cli_main

    capsys.readouterr()
    assert cli_main(["duplicates", str(out), "--members", "--format", "json", "--out", str(tmp_path / "dups.parquet")]) == 0
    got = json.loads(capsys.readouterr().out)
    clusters = {}
    for m in got:
        clusters.setdefault(m["cluster_id"], []).append(m)
    by_first = {tuple(sorted(Path(m["uri"]).name for m in ms)): ms for ms in clusters.values()}
    assert sorted(by_first) == [("gen_64x96_a.png", "gen_64x96_dup.png"), ("pristine1.jpg", "pristine1_repost.jpg")]
    pair = by_first[("pristine1.jpg", "pristine1_repost.jpg")]
    assert [Path(m["uri"]).name for m in pair if m["is_best"]] == ["pristine1.jpg"]  # the larger copy
    assert pair[0]["cluster_score_spread"] == pytest.approx(abs(pair[0]["score"] - pair[1]["score"]))
    assert pq.read_table(tmp_path / "dups.parquet").num_rows == 4
    # Content credentials: trusted under the anchors given to the scan; "unedited" yet scored: a contradiction
    # at any score threshold (the untrained weights' scores mean nothing; the query's mechanics do).
    assert run_sql(str(out), "SELECT c2pa_state FROM latest WHERE uri LIKE '%signed_camera.jpg'")[1] == [("trusted",)]
    assert cli_main(["contradictions", str(out), "--min-score", "0", "--format", "json"]) == 0
    assert [Path(r["uri"]).name for r in json.loads(capsys.readouterr().out)] == ["signed_camera.jpg"]


def test_scan_s3_bucket_read_and_write(ray_env, reference_scores, synth_ckpt, moto_endpoint, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=moto_endpoint)
    fs.mkdir("archive-bucket")
    local = tmp_path / "archive"
    expected = make_archive(local)
    fs.put(str(local) + "/", "archive-bucket/in/", recursive=True)
    _local_ray(ray_env)
    storage = StorageConfig(endpoint_url=moto_endpoint)
    s = run_scan(ScanConfig(input="s3://archive-bucket/in", output="s3://archive-bucket/out",
                            checkpoint=str(synth_ckpt), s3_endpoint=moto_endpoint, run_id="s3run",
                            allow_download=False), log=lambda m: None)
    assert (s.listed, s.ok, s.errors, s.skipped) == (17, 10, 6, 1)
    assert s.results_version is not None and fs.exists("archive-bucket/out/results/_delta_log")
    recs = _check_results("s3://archive-bucket/out", expected, reference_scores,
                          lambda n: f"s3://archive-bucket/in/{n}", storage, "s3run")
    assert all(r["map_uri"].startswith("maps/") for r in recs if r["status"] == "ok")  # relative to OUTPUT
    assert all(r["etag_or_mtime"] for r in recs if r["status"] != "skipped")


def test_scan_on_two_node_cluster(ray_env, reference_scores, synth_ckpt, tmp_path):
    """The same scan on a 2-node local Ray cluster (--ray-address) puts actors on both nodes.

    Each node has 1 CPU and each actor needs 0.6, so the pool can only exist across both nodes;
    the remaining 0.4 CPU per node runs the decode tasks.
    """
    from ray.cluster_utils import Cluster

    if ray_env.is_initialized():
        ray_env.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 300 * 2**20,
                                                             "include_dashboard": False})
    cluster.add_node(num_cpus=1, object_store_memory=300 * 2**20)
    cluster.wait_for_nodes()
    try:
        root = tmp_path / "archive"
        expected = make_archive(root)
        out = tmp_path / "out"
        s = run_scan(ScanConfig(input=str(root), output=str(out), checkpoint=str(synth_ckpt),
                                run_id="cluster1", actors=2, cpus_per_actor=0.6, batch_size=1, ray_address=cluster.address,
                                allow_download=False), log=lambda m: None)
        assert (s.ok, s.errors, s.skipped) == (10, 6, 1)
        recs = _check_results(str(out), expected, reference_scores, lambda n: str(root / n), StorageConfig(), "cluster1")
        nodes = {r["ray_node_id"] for r in recs if r["status"] == "ok"}
        assert len(nodes) == 2, nodes
    finally:
        ray_env.shutdown()
        cluster.shutdown()


def test_scan_command_line(shared, synth_ckpt, tmp_path, capsys):
    """`trufor-scan scan` starts its own local Ray; `query`, `top`, `report`, `show` and `export` read what it
    wrote, as a person would use them (the page in headless Chromium; the bundle's reproduce.sh run)."""
    from report_data import jpeg_with_exif

    from jobs.cli import main as cli_main

    root = tmp_path / "archive"
    root.mkdir()
    shutil.copy(IMAGES / "tampered2.png", root / "a.png")
    shutil.copy(IMAGES / "pristine1.jpg", root / "c.jpg")
    (root / "b.jpg").write_bytes(b"")
    # Data that must stay text on the page: a file name and an EXIF field holding HTML.
    rgb = np.asarray(Image.open(IMAGES / "pristine1.jpg").convert("RGB"))[:128, :160]
    (root / 'd "<b>bold<b>" & co.jpg').write_bytes(jpeg_with_exif(np.ascontiguousarray(rgb), "<script>", "M",
                                                                     "<script>window.__pwned = 3</script>"))
    exe = str(Path(sys.executable).with_name("trufor-scan"))
    env = dict(os.environ, TRUFOR_WEIGHTS=str(synth_ckpt))
    out = tmp_path / "out"
    p = subprocess.run([exe, "scan", str(root), "--output", str(out), "--no-download",
                        "--run-id", "cli1", "--progress-every", "1"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 3, p.stderr[-3000:]  # finished, every input has its row, one is an error row
    assert "listed 4, scanned 4 (3 ok, 1 errors, 0 copies of bytes already scored), skipped 0" in p.stderr
    assert "scan: 100%" in p.stderr and "4/4" in p.stderr and f"runs:    {out}/runs (run_id cli1)" in p.stderr
    # The weights are said at the start and in the summary; untrained ones with a warning, also in the run record.
    assert f"scan cli1: weights {synth_ckpt}" in p.stderr and "UNTRAINED test weights" in p.stderr
    assert p.stderr.count("WARNING: these weights are UNTRAINED") == 2
    # Stage lines before the first row; progress off a terminal as whole lines (a log file stays readable).
    assert "scan cli1: starting Ray" in p.stderr and "scan cli1: first results after" in p.stderr
    assert "\r" not in p.stderr
    assert "core_worker.cc" not in p.stderr  # Ray's known-harmless C++ line went to its log instead
    q = subprocess.run([exe, "query", str(out), "SELECT uri, status, error FROM results ORDER BY uri",
                        "--format", "csv"], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    lines = q.stdout.strip().splitlines()
    assert lines[0] == "uri,status,error" and lines[1].endswith("a.png,ok,") and "empty file" in lines[2]
    t = subprocess.run([exe, "top", str(out), "--min-score", "0", "--format", "json"],
                       capture_output=True, text=True, timeout=120)
    assert t.returncode == 0 and '"map_uri"' in t.stdout and "a.png" in t.stdout
    best = json.loads(t.stdout)[0]
    assert run_sql(str(out), "SELECT weights_untrained FROM runs WHERE run_id = 'cli1'")[1] == [(True,)]

    # The review page, in a real browser. report/show/export run through the CLI's entry point in
    # this process (each would otherwise pay a Python + torch start: the suite has a 15-minute budget).
    assert cli_main(["report", str(out), "--out", str(tmp_path / "page")]) == 0
    assert "report: 3 candidates shown of 3" in capsys.readouterr().err
    page = (tmp_path / "page" / "index.html").read_text()
    assert "&lt;script&gt;window.__pwned = 3&lt;/script&gt;" in page and "&lt;b&gt;bold&lt;b&gt;" in page
    why = browser_missing()
    if why and os.environ.get("TRUFOR_REQUIRE_BROWSER"):
        pytest.fail(f"TRUFOR_REQUIRE_BROWSER is set but {why}")
    if not why:
        facts = check_report(tmp_path / "page", expected_cards=3)
        assert facts["order"][0] == best["uri"] and facts["detail_panels"] == 4 and facts["pwned"] is None

    # The figure of the best candidate, named by a sha256 prefix.
    sha = run_sql(str(out), "SELECT sha256 FROM results WHERE uri = ?", [best["uri"]])[1][0][0]
    assert cli_main(["show", sha[:12], "--output", str(out), "--png", str(tmp_path / "fig.png")]) == 0
    with Image.open(tmp_path / "fig.png") as im:
        assert im.format == "PNG" and im.size[0] == 1600 and im.size[1] > 300

    # An evidence bundle, and its reproduce.sh re-scores the original with `predict`: the same score.
    capsys.readouterr()
    assert cli_main(["export", str(out), "--uri", best["uri"], "--out", str(tmp_path / "ev")]) == 0
    folder = Path(capsys.readouterr().out.strip())
    rep = subprocess.run(["sh", str(folder / "reproduce.sh")], capture_output=True, text=True, timeout=300,
                         env=dict(env, PATH=f"{Path(exe).parent}:{os.environ['PATH']}"))
    assert rep.returncode == 0, rep.stderr[-2000:]
    recorded, reproduced = (float(v) for v in re.findall(r"(?:recorded|reproduced) score ([0-9.]+)", rep.stdout))
    assert abs(recorded - best["score"]) < 1e-6 and abs(reproduced - recorded) <= F32_ATOL["score"], rep.stdout


def test_sweep_with_second_opinions_through_ray(ray_env, synth_ckpt, model, mantranet_h5, tmp_path):
    """`sweep --noise-anomaly`, then `--mantranet`, through real Ray actors and the real predictor: ok rows get
    the second opinions and their stored maps; a copy of bytes scored earlier WITHOUT one is scored again (its
    result would lack the columns), a copy of bytes scored with it repeats them (dedup); --rescore rescans
    what was scored another way; SQL asks where both detectors agree."""
    from noiseprint_lab.localizers import fit_noise_anomaly
    from trufor_core.checkpoint import sha256_file

    rng = np.random.default_rng(7)
    fitted = fit_noise_anomaly(model.dncnn, [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)], dims=8, window=8)
    na = fitted.save(tmp_path / "na.pt")
    root, out = tmp_path / "crawl", tmp_path / "out"
    root.mkdir()
    (root / "a.png").write_bytes(_img(64, 96, 11))
    (root / "b.png").write_bytes(_img(64, 96, 12))
    (root / "bad.png").write_bytes(b"not an image")
    _local_ray(ray_env)

    def sweep(run_id, noise_anomaly, mantranet=None, rescore=False):
        return run_scan(ScanConfig(input=str(root), output=str(out), checkpoint=str(synth_ckpt), run_id=run_id,
                                   incremental=True, batch_size=2, allow_download=False, rescore=rescore,
                                   noise_anomaly=noise_anomaly, mantranet=mantranet), log=lambda m: None)

    def rows(run_id):
        cols, rs = run_sql(str(out), "SELECT * FROM results WHERE run_id = ? ORDER BY uri", [run_id])
        return {Path(r[cols.index("uri")]).name: dict(zip(cols, r)) for r in rs}

    s1 = sweep("plain", None)
    assert (s1.ok, s1.errors) == (2, 1)
    assert all(r["noise_anomaly_score"] is None for r in rows("plain").values())

    shutil.copy(root / "a.png", root / "a_repost.png")  # bytes scored by "plain", without the second opinion
    (root / "c.png").write_bytes(_img(80, 72, 13))
    shutil.copy(root / "c.png", root / "c_repost.png")  # new bytes twice in one sweep: scored once
    s2 = sweep("na", str(na))
    assert (s2.to_scan, s2.ok, s2.dedup) == (3, 3, 1)  # a.png and b.png are not rescored
    r2 = rows("na")
    assert set(r2) == {"a_repost.png", "c.png", "c_repost.png"}
    copies = [n for n, r in r2.items() if r["dedup_of"] is not None]
    assert len(copies) == 1 and copies[0] in ("c.png", "c_repost.png")
    copy = r2[copies[0]]
    orig = r2[({"c.png", "c_repost.png"} - set(copies)).pop()]
    assert copy["dedup_of"] == orig["uri"]
    for name in ("a_repost.png", Path(orig["uri"]).name):
        r = r2[name]
        assert r["noise_anomaly_model"] == sha256_file(na), name
        heat = maps.load_lowres_map(resolve_ref(str(out), r["noise_anomaly_map_uri"]))
        assert heat.shape == (r["height"], r["width"]) and np.isfinite(heat).all()
        # The score is the map's largest value (stored as float16 4x4 cell means, so below or at it).
        assert np.isfinite(r["noise_anomaly_score"]) and heat.max() <= r["noise_anomaly_score"] * (1 + 2e-3)
    keys = ("score", "map_uri", "noise_anomaly_score", "noise_anomaly_map_uri", "noise_anomaly_model")
    assert [copy[k] for k in keys] == [orig[k] for k in keys]

    # ManTra-Net as a further opinion: bytes scored without it are scored again, not copied (another scoring)
    (root / "d.png").write_bytes(_img(72, 88, 14))
    shutil.copy(root / "c.png", root / "c_repost2.png")
    s3 = sweep("mt", str(na), str(mantranet_h5))
    assert (s3.to_scan, s3.ok, s3.dedup) == (2, 2, 0)
    r3 = rows("mt")
    mt_sha = sha256_file(mantranet_h5)
    for r in r3.values():
        assert r["mantranet_weights"] == mt_sha and r["noise_anomaly_model"] == sha256_file(na)
        mt_map = maps.load_lowres_map(resolve_ref(str(out), r["mantranet_map_uri"]))
        assert mt_map.shape == (r["height"], r["width"]) and 0 <= mt_map.min() and mt_map.max() <= r["mantranet_score"] + 1e-3
    # --rescore: every ok row scored another way is scored again; a and a_repost share bytes (one copy), c and
    # c_repost repeat bytes just scored this way (c_repost2): copies of it
    s4 = sweep("mt-rescore", str(na), str(mantranet_h5), rescore=True)
    assert (s4.to_scan, s4.ok, s4.dedup) == (5, 5, 3)
    r4 = rows("mt-rescore")
    assert r4["c.png"]["mantranet_score"] == r3["c_repost2.png"]["mantranet_score"]
    assert r4["c.png"]["dedup_of"] == r3["c_repost2.png"]["uri"]
    # SQL: where both detectors agree (docs/results.md); the rows' own numbers say the same
    cols, agree = run_sql(str(out), "SELECT uri FROM latest WHERE status = 'ok' AND score >= 0.5 AND mantranet_score >= 0.5")
    _, every = run_sql(str(out), "SELECT uri, score, mantranet_score FROM latest WHERE status = 'ok'")
    assert sorted(u for (u,) in agree) == sorted(u for u, a, b in every if a >= 0.5 and b >= 0.5)
    assert len(every) == 7  # every ok file (bad.png is an error row)

    # The review shows both maps: the page's detail panels, `show`'s figure (a fifth panel), the evidence bundle
    from jobs.cli import main as cli_main
    from pipeline.review.evidence import render_figure
    from pipeline.review.figures import find_row

    assert cli_main(["report", str(out), "--out", str(tmp_path / "page"), "--min-score", "0"]) == 0
    assert len(list((tmp_path / "page").glob("c/*/*/mantranet.jpg"))) == 4  # distinct bytes: a, b, c, d
    assert "ManTra-Net map (second detector)" in (tmp_path / "page" / "index.html").read_text()
    if not browser_missing():
        check_report(tmp_path / "page")  # every image decodes, nothing leaves the disk, no script error
    _, boxes = render_figure(find_row(str(out), str(root / "d.png"), StorageConfig()), str(out), StorageConfig())
    assert "ManTra-Net map" in boxes and len(boxes) == 5
    assert cli_main(["export", str(out), "--uri", str(root / "d.png"), "--out", str(tmp_path / "ev")]) == 0
    bundle = next((tmp_path / "ev").iterdir())
    assert (bundle / "mantranet.png").is_file() and "mantranet.png" in (bundle / "SHA256SUMS").read_text()


def test_huge_image_progress_and_budget_through_ray(ray_env, synth_ckpt, tmp_path, capfd):
    """An image that runs past its budget gets a transient error row saying how far it got, progress lines
    (step k/N) reach the driver from the actor while it runs, the other image is scored; a later sweep with
    a larger budget retries it and scores it. (Small figures stand in for a minute and 30 minutes.)"""
    root = tmp_path / "archive"
    root.mkdir()
    (root / "big.png").write_bytes(_img(800, 1000, 7))
    (root / "small.png").write_bytes(_img(64, 96, 8))
    _local_ray(ray_env)
    out = tmp_path / "out"
    base = dict(input=str(root), output=str(out), checkpoint=str(synth_ckpt), allow_download=False, backend="eager",
                slow_image_s=0.3)
    capfd.readouterr()
    s = run_scan(ScanConfig(**base, max_seconds_per_image=1.5, run_id="budget1", incremental=True), log=lambda m: None)
    assert (s.ok, s.errors) == (1, 1)
    err = capfd.readouterr().err
    steps = re.findall(r"big\.png: step (\d+)/(\d+) after \d+ s", err)
    assert steps, err[-3000:]
    done, total = int(steps[-1][0]), int(steps[-1][1])
    assert 0 < done < total
    _, rows = run_sql(str(out), "SELECT uri, status, error_kind, error, steps, backend FROM latest ORDER BY uri")
    big, small = rows
    assert big[1:3] == ("error", "transient") and big[4] is None
    assert re.fullmatch(r"out of time: stopped after \d+ s at step \d+/(\d+) \(budget 1.5 s per image\); a later "
                        r"sweep retries it .*", big[3]) and f"/{total} " in big[3], big[3]
    assert small[1] == "ok" and small[4] >= 1 and small[5] == "eager"
    # The review page lists it under "Slow images", with how far it got.
    from jobs.cli import main as cli_main

    assert cli_main(["report", str(out), "--out", str(tmp_path / "page")]) == 0
    page = (tmp_path / "page" / "index.html").read_text()
    slow = page[page.index('id="slow"'):page.index('id="runs"')]
    assert "Slow images: 1 took over 60 s or ran out of time" in slow and "big.png" in slow and "small.png" not in slow
    assert big[3] in slow  # the error row's own words: how far it got
    # The next sweep with no budget retries the transient row only, and scores it.
    s2 = run_scan(ScanConfig(**base, max_seconds_per_image=0, run_id="budget2", incremental=True), log=lambda m: None)
    assert (s2.to_scan, s2.ok, s2.errors) == (1, 1, 0)
    _, rows = run_sql(str(out), "SELECT status, steps, run_id FROM latest WHERE uri LIKE '%big.png'")
    assert rows == [("ok", total, "budget2")]
