"""`evaluate`: metrics checked against independent implementations (scikit-learn, IMDL-BenCo), TRUTH
files and their problems, a generated labelled set through the CLI and the page, and a labelled set
of real splices through a real scan (integration)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import REPO
from page_check import browser_missing, open_page

sys.path.insert(0, str(REPO / "bench"))
from evaluation_data import make_labelled_set  # noqa: E402
from jobs.cli import main  # noqa: E402
from pipeline.base.storage import StorageConfig  # noqa: E402
from pipeline.results import metrics  # noqa: E402
from pipeline.results.truth import FORGED, PRISTINE, load_mask, mask_array, read_truth  # noqa: E402

sk = pytest.importorskip("sklearn.metrics")


def _benco():
    """IMDL-BenCo's own metric functions (evaluation/temp.py), loaded from the installed package
    without importing the package (its __init__ pulls timm and model code)."""
    spec = importlib.util.find_spec("IMDLBenCo")
    if spec is None:
        if os.environ.get("TRUFOR_REQUIRE_SHARED"):
            pytest.fail("IMDL-BenCo is not installed (make install does: pip install --no-deps imdlbenco==0.1.45)")
        pytest.skip("IMDL-BenCo is not installed (pip install --no-deps imdlbenco==0.1.45)")
    path = Path(spec.submodule_search_locations[0]) / "evaluation" / "temp.py"
    mod_spec = importlib.util.spec_from_file_location("benco_temp", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _cases(rng, n=40):
    """Per-image (mask, map) pairs of every kind: sizes, tiny and large regions, ties, saturated maps."""
    out = []
    for i in range(n):
        h, w = int(rng.integers(8, 60)), int(rng.integers(8, 60))
        mask = np.zeros((h, w), bool)
        y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        mask[y:y + int(rng.integers(1, h - y)), x:x + int(rng.integers(1, w - x))] = True
        if mask.all():
            mask[0, 0] = False
        values = np.clip(mask * rng.uniform(0.2, 0.9) + rng.normal(0, 0.3, (h, w)), 0, 1)
        if i % 5 == 0:
            values = np.round(values, 1)  # many ties
        if i % 7 == 0:
            values = np.zeros((h, w))  # predicts nothing: F1 0, MCC 0
        out.append((mask, values))
    return out


def test_known_answers():
    mask = np.zeros((10, 10), bool)
    mask[:5] = True  # 50 forged pixels
    values = np.zeros((10, 10))
    values[:3] = 0.9  # 30 true positives
    values[5:6] = 0.9  # 10 false positives; 20 false negatives, 40 true negatives
    m = metrics.pixel_metrics(mask, values, 0.5)
    assert m["f1"] == pytest.approx(60 / 90) and m["iou"] == pytest.approx(30 / 60)
    assert m["mcc"] == pytest.approx((30 * 40 - 10 * 20) / np.sqrt(40 * 50 * 50 * 60))
    assert m["f1_best"] == pytest.approx(60 / 90)  # one distinct positive value: the same partition
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.roc_auc([1, 1], [0.1, 0.2]) is None
    assert metrics.tpr_at_fpr([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9, 0.8, 0.95], 0.25) == \
        {"tpr": 1.0, "fpr": 0.25, "threshold": 0.8}


def test_metrics_agree_with_sklearn_and_imdlbenco():
    """The same inputs through scikit-learn and IMDL-BenCo's functions: equal to 1e-9 (sklearn), and to
    IMDL-BenCo within its documented 1e-8 denominator terms."""
    import torch

    benco = _benco()
    rng = np.random.default_rng(11)
    for mask, values in _cases(rng):
        ours = metrics.pixel_metrics(mask, values, 0.5, inverted=True)
        y, pred = mask.ravel(), values.ravel() > 0.5
        assert ours["f1"] == pytest.approx(sk.f1_score(y, pred, zero_division=0), abs=1e-9)
        assert ours["iou"] == pytest.approx(sk.jaccard_score(y, pred, zero_division=0), abs=1e-9)
        assert ours["mcc"] == pytest.approx(sk.matthews_corrcoef(y, pred), abs=1e-9)
        assert ours["pixel_auc"] == pytest.approx(sk.roc_auc_score(y, values.ravel()), abs=1e-9)
        p, r, _ = sk.precision_recall_curve(y, values.ravel())
        with np.errstate(invalid="ignore", divide="ignore"):
            best = np.nanmax(np.where(p + r > 0, 2 * p * r / (p + r), 0))
        assert ours["f1_best"] == pytest.approx(best, abs=1e-9)
        inv = sk.f1_score(y, (1 - values.ravel()) > 0.5, zero_division=0)
        assert ours["f1_inverted_max"] == pytest.approx(max(ours["f1"], inv), abs=1e-9)
        # IMDL-BenCo: B x 1 x H x W tensors, a region mask of ones, its threshold rule (predict > 0.5).
        t = torch.from_numpy(values[None, None].astype(np.float64))
        m = torch.from_numpy(mask[None, None].astype(np.float64))
        tp, tn, fp, fn = benco.cal_confusion_matrix(t, m, torch.ones_like(m), threshold=0.5)
        assert (int(tp), int(fp), int(fn), int(tn)) == metrics.confusion(mask, values > 0.5)
        assert float(benco.cal_F1(tp, tn, fp, fn)[0]) == pytest.approx(ours["f1"], abs=1e-7)
    # Image level.
    labels = rng.random(300) < 0.4
    scores = np.round(np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 300), 0, 1), 2)
    assert metrics.roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    sfpr, stpr, sthr = sk.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sfpr, atol=1e-12)
    np.testing.assert_allclose(tpr, stpr, atol=1e-12)
    np.testing.assert_allclose(thr[1:], sthr[1:], atol=1e-12)
    assert metrics.balanced_accuracy(labels, scores >= 0.5) == pytest.approx(
        sk.balanced_accuracy_score(labels, scores >= 0.5), abs=1e-12)
    for target in (0.01, 0.05, 0.2):
        at = metrics.tpr_at_fpr(labels, scores, target)
        ok = sfpr <= target
        assert at["tpr"] == pytest.approx(stpr[ok].max(), abs=1e-12) and at["fpr"] <= target


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> str:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return str(path)


def test_masks_every_mode_binarised_at_half_range(tmp_path):
    base = np.zeros((6, 8), bool)
    base[1:4, 2:6] = True
    cases = {
        "l.png": Image.fromarray((base * 200).astype(np.uint8)),
        "one.png": Image.fromarray(base).convert("1"),
        "rgb.png": Image.fromarray(np.stack([base * 255] * 3, -1).astype(np.uint8)),
        "i16.png": Image.fromarray((base * 40000).astype(np.uint16)),
        "f.tif": Image.fromarray(base.astype(np.float32) * 0.9),
        "p.png": Image.fromarray((base * 255).astype(np.uint8)).convert("P"),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        got = mask_array((tmp_path / name).read_bytes(), name)
        assert got.shape == base.shape and (got == base).all(), (name, im.mode)
    # Below half the range is pristine: a grey of 100 in an 8-bit mask, 30000 in a 16-bit one.
    assert not mask_array(_png_bytes((base * 100).astype(np.uint8)), "x").any()
    assert not mask_array(_png_bytes((base * 30000).astype(np.uint16)), "x").any()
    # Another size: nearest-neighbour resize, said.
    m, note = load_mask(str(tmp_path / "l.png"), StorageConfig(), (12, 16))
    assert m.shape == (12, 16) and m.sum() == 4 * base.sum() and "resized" in note
    with pytest.raises(ValueError, match="cannot decode mask"):
        mask_array(b"not an image", "bad.png")
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file|FIFO"):
        load_mask(str(fifo), StorageConfig(), (6, 8))


def _png_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_truth_files_every_layout_and_problem(tmp_path):
    (tmp_path / "imgs").mkdir()
    a, b, c = (str((tmp_path / "imgs" / n).resolve()) for n in ("a.jpg", "b.jpg", "c.jpg"))
    rows = [{"uri": a, "label": "pristine", "mask": None, "source": "x"},
            {"uri": b, "label": "Forged", "mask": "masks/b.png", "source": "y"},
            {"uri": c, "label": "fake", "mask": None, "source": None},
            {"uri": a, "label": "pristine", "mask": None, "source": "x"},
            {"uri": b, "label": "pristine", "mask": None, "source": "y"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    (tmp_path / "t.json").write_text(json.dumps(rows))
    with open(tmp_path / "t.csv", "w") as f:
        f.write("uri,label,mask,source\n" + "".join(f"{r['uri']},{r['label']},{r['mask'] or ''},{r['source'] or ''}\n"
                                                    for r in rows))
    for name in ("t.parquet", "t.json", "t.csv"):
        t = read_truth(str(tmp_path / name))
        assert t.given == 5 and [e.label for e in t.entries] == [PRISTINE, FORGED], name
        assert t.entries[1].mask == str((tmp_path / "masks" / "b.png").resolve())  # relative to the TRUTH file
        why = dict(t.problems)
        assert "neither 'pristine' nor 'forged'" in why[c] and len(t.problems) == 3
        assert any("counted once" in w for _, w in t.problems) and any("kept the first" in w for _, w in t.problems)
    # IMDL-BenCo's pairs, relative to the file.
    (tmp_path / "benco.json").write_text(json.dumps([["imgs/a.jpg", "Negative"], ["imgs/b.jpg", "masks/b.png"],
                                                     "junk"]))
    t = read_truth(str(tmp_path / "benco.json"))
    assert [(e.uri, e.label) for e in t.entries] == [(a, PRISTINE), (b, FORGED)] and t.given == 3
    assert len(t.problems) == 1
    from pipeline.results.truth import TruthError

    (tmp_path / "bad.csv").write_text("path,truth\nx,y\n")
    with pytest.raises(TruthError, match="no 'uri' and no 'label' column"):
        read_truth(str(tmp_path / "bad.csv"))
    with pytest.raises(TruthError, match="does not exist"):
        read_truth(str(tmp_path / "none.csv"))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lab")
    return {"root": root, **make_labelled_set(root / "out", 14, 14, seed=5)}


def test_evaluate_cli_figures_match_an_independent_recount(labelled, tmp_path, capsys):
    """`evaluate` on a generated labelled set: its figures equal sklearn's on the same maps and masks;
    problems are listed, never dropped; the untrained warning is there."""
    from pipeline.base import maps
    from pipeline.base.store import resolve_ref

    truth = Path(labelled["truth"])
    lines = truth.read_text().splitlines()
    extra = tmp_path / "truth.csv"
    # Three more entries: never scanned, a forged one whose mask is missing, one listed twice.
    missing_uri = str(Path(labelled["images"]) / "never_scanned.jpg")
    first_forged = next(ln for ln in lines if ",forged," in ln)
    broken = first_forged.split(",")
    broken_mask = broken[:2] + [str(tmp_path / "gone.png")] + broken[3:]
    extra.write_text("\n".join([lines[0]] + [ln for ln in lines[1:] if ln != first_forged]
                               + [",".join(broken_mask), f"{missing_uri},pristine,,camera", lines[1]]) + "\n")
    out = tmp_path / "ev"
    assert main(["evaluate", str(labelled["root"] / "out"), "--truth", str(extra), "--out", str(out), "--workers", "2",
                 "--bootstrap", "100"]) == 0
    err = capsys.readouterr().err
    assert "evaluate: 28 of 30 labelled images evaluated (14 pristine, 14 forged, 13 with pixel figures)" in err
    assert "UNTRAINED" in err
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["untrained_weights"] and ev["counts"]["problems"] == 3
    why = {p["uri"]: p["why"] for p in ev["problems"]}
    assert "never scanned" in why[missing_uri] and any("gone.png" in w for w in why.values())
    # The pixel F1 at 0.5, recounted with sklearn from the stored maps and the masks.
    rows = {r["uri"]: r for r in _truth_rows(extra)}
    from pipeline.base.sql import run_sql

    cols, got = run_sql(str(labelled["root"] / "out"), "SELECT uri, score, map_uri FROM latest")
    f1s, labels, scores = [], [], []
    for uri, score, ref in got:
        r = rows.get(uri)
        if r is None:
            continue
        labels.append(r["label"] == "forged")
        scores.append(score)
        if r["label"] == "forged" and Path(r["mask"]).exists():
            anomaly, _ = maps.load(resolve_ref(str(labelled["root"] / "out"), ref))
            mask = np.asarray(Image.open(r["mask"])) > 127
            f1s.append(sk.f1_score(mask.ravel(), anomaly.ravel() > 0.5, zero_division=0))
    det = ev["detectors"]["trufor"]
    assert det["pixel"]["all"]["f1"]["mean"] == pytest.approx(np.mean(f1s), abs=1e-9)
    assert det["pixel"]["all"]["forged_images"] == len(f1s) == 13
    assert det["image"]["all"]["roc_auc"]["value"] == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    lo, hi = det["image"]["all"]["roc_auc"]["ci95"]
    assert lo <= det["image"]["all"]["roc_auc"]["value"] <= hi
    assert {"source=camera", "source=platform"} <= set(det["image"])
    assert (out / "roc-trufor.png").stat().st_size > 1000 and (out / "f1-trufor.png").stat().st_size > 1000
    # Run again into the same folder: replaced; into a folder it did not write: refused.
    assert main(["evaluate", str(labelled["root"] / "out"), "--truth", str(extra), "--out", str(out), "--workers", "1",
                 "--bootstrap", "0"]) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["evaluate", str(labelled["root"] / "out"), "--truth", str(extra), "--out", str(tmp_path / "other")]) == 2
    assert "not a trufor-scan evaluation" in capsys.readouterr().err


def _truth_rows(path: Path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluation_page_in_browser(labelled, tmp_path):
    """The page as a person opens it: from disk, no request leaves it, no script error, every picture
    decodes, the figures tables and the worst misses are there."""
    why = browser_missing()
    if why:
        if os.environ.get("TRUFOR_REQUIRE_BROWSER"):
            pytest.fail(f"TRUFOR_REQUIRE_BROWSER is set but {why}")
        pytest.skip(why)
    out = tmp_path / "ev"
    assert main(["evaluate", str(labelled["root"] / "out"), "--truth", labelled["truth"], "--out", str(out),
                 "--workers", "1", "--bootstrap", "50"]) == 0
    with open_page(out / "index.html") as (page, errors, remote):
        assert page.locator("#detector-trufor table.figures").count() == 2  # image and pixel level
        assert "UNTRAINED" in page.locator("#warning-1").inner_text()
        assert page.locator("#count-evaluated").inner_text() == "28"
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                               ".map(i => i.src)")
        n_images = page.evaluate("document.images.length")
        assert broken == [] and n_images >= 2 + 2 * 12, (broken, n_images)
        assert page.locator("section.misses article.card").count() == 24
        assert errors == [] and remote == []


@pytest.mark.slow
def test_evaluate_real_splices_through_a_real_scan(shared, synth_ckpt, model, mantranet_h5, tmp_path, capsys):
    """The whole loop from a clean clone: a labelled set of real splices (with masks) and pristine
    photographs, scanned by `trufor-scan scan` with the noise-anomaly and ManTra-Net second opinions; then
    `evaluate` (every detector, pixel level from the stored maps) and `calibrate --forged TRUTH`."""
    import skimage.data as skd

    from noiseprint_lab.localizers import fit_noise_anomaly

    root = tmp_path / "labelled"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    photos = [np.ascontiguousarray(skd.astronaut()[::4, ::4]), np.ascontiguousarray(skd.coffee()[::4, ::4]),
              np.ascontiguousarray(skd.chelsea()[::3, ::3])]
    truth = ["uri,label,mask,source"]  # paths relative to the TRUTH file
    for i, rgb in enumerate(photos):
        Image.fromarray(rgb).save(root / "images" / f"pristine{i}.jpg", quality=90)
        truth.append(f"images/pristine{i}.jpg,pristine,,camera")
        host = np.array(photos[(i + 1) % 3])
        donor = photos[(i + 2) % 3]
        h, w = host.shape[:2]
        y, x, s = h // 4, w // 3, min(h, w) // 3
        host[y:y + s, x:x + s] = donor[:s, :s]
        Image.fromarray(host).save(root / "images" / f"spliced{i}.jpg", quality=90)
        mask = np.zeros((h, w), np.uint8)
        mask[y:y + s, x:x + s] = 255
        Image.fromarray(mask).save(root / "masks" / f"spliced{i}.png")
        truth.append(f"images/spliced{i}.jpg,forged,masks/spliced{i}.png,camera")
    (root / "truth.csv").write_text("\n".join(truth) + "\n")
    rng = np.random.default_rng(7)
    na = fit_noise_anomaly(model.dncnn, [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)], dims=8,
                           window=8).save(tmp_path / "na.pt")
    exe = str(Path(sys.executable).with_name("trufor-scan"))
    out = tmp_path / "out"
    p = subprocess.run([exe, "scan", str(root / "images"), "--output", str(out), "--no-download", "--noise-anomaly", str(na),
                        "--checkpoint", str(synth_ckpt), "--mantranet", str(mantranet_h5)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    ev_dir = tmp_path / "ev"
    assert main(["evaluate", str(out), "--truth", str(root / "truth.csv"), "--out", str(ev_dir), "--workers", "2",
                 "--bootstrap", "100"]) == 0
    ev = json.loads((ev_dir / "evaluation.json").read_text())
    assert ev["counts"]["evaluated"] == 6 and ev["counts"]["forged_with_pixel_figures"] == 3
    assert set(ev["detectors"]) == {"trufor", "noise_anomaly", "mantranet"} and ev["untrained_weights"]
    assert ev["detectors"]["mantranet"]["pixel"]["all"]["forged_images"] == 3
    assert 0 <= ev["detectors"]["mantranet"]["pixel"]["all"]["f1"]["mean"] <= 1  # a fixed point: its sigmoid's 0.5
    assert ev["detectors"]["noise_anomaly"]["pixel"]["all"]["forged_images"] == 3
    assert "f1" not in ev["detectors"]["noise_anomaly"]["pixel"]["all"]  # no fixed threshold in the rows
    for f in ("f1", "f1_best", "mcc", "iou", "pixel_auc"):
        v = ev["detectors"]["trufor"]["pixel"]["all"][f]["mean"]
        assert v is not None and -1 <= v <= 1
    capsys.readouterr()
    truth_csv = str(root / "truth.csv")
    assert main(["calibrate", str(out), "--reference", truth_csv, "--forged", truth_csv, "--sources", truth_csv,
                 "--target-fpr", "0.34"]) == 0
    assert "UNTRAINED" in capsys.readouterr().err  # the calibration says its thresholds mean nothing
    cal = json.loads(next((out / "_calibrations").glob("*.json")).read_text())
    assert [(s["source"], s["n"], s["forged_n"]) for s in cal["sources"]] == [("camera", 3, 3)]
    shutil.rmtree(ev_dir)


def test_calibrate_takes_a_truth_file_with_one_source(labelled, tmp_path, capsys):
    """A reference that names one source needs no --source-of: every row is that source, said in a warning."""
    rows = _truth_rows(Path(labelled["truth"]))
    one = tmp_path / "one.csv"
    one.write_text("uri,label,mask,source\n" + "".join(f"{r['uri']},{r['label']},{r['mask']},desk's archive\n"
                                                     for r in rows))
    assert main(["calibrate", str(labelled["root"] / "out"), "--reference", str(one), "--forged", str(one),
                 "--target-fpr", "0.1"]) == 0
    cap = capsys.readouterr()
    assert "the reference names one source, \"desk's archive\"" in cap.err and "desk's archive" in cap.out


def test_evaluate_with_a_calibrations_verdicts(labelled, tmp_path, capsys):
    """--calibration: the balanced accuracy of the calibration's verdicts (flagged vs not), recounted."""
    truth, out = labelled["truth"], str(labelled["root"] / "out")
    assert main(["calibrate", out, "--reference", truth, "--forged", truth, "--sources", truth,
                 "--target-fpr", "0.1"]) == 0
    assert main(["evaluate", out, "--truth", truth, "--out", str(tmp_path / "ev"), "--calibration", "latest",
                 "--workers", "1", "--bootstrap", "20"]) == 0
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    got = ev["detectors"]["trufor"]["image"]["all"]["balanced_accuracy_calibrated"]["value"]
    from pipeline.base.sql import run_sql
    from pipeline.results.calibration import connector, load_calibration

    cal = load_calibration("latest", out, StorageConfig())
    labels = {r["uri"]: r["label"] == "forged" for r in _truth_rows(Path(truth))}
    _, rows = run_sql(out, "SELECT uri, verdict FROM latest", connector=connector(cal))
    y = [labels[u] for u, _ in rows if u in labels]
    flagged = [v == "flagged" for u, v in rows if u in labels]
    assert ev["calibration"] == cal["id"] and got == pytest.approx(sk.balanced_accuracy_score(y, flagged), abs=1e-12)
