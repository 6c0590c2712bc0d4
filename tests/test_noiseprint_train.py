"""Noiseprint++ retraining: data, loss, export (fast) and Ray Train runs with 2 CPU workers (slow)."""
from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import kill_ray_processes
from noiseprint_lab.cameras import make_camera_corpus
from noiseprint_lab.data import (EVAL_HISTORIES, HISTORIES, RESIZE_FACTORS, TRAIN_HISTORIES, BatchLayout, Corpus,
                                 CorpusReport, apply_history, load_corpus, sample_batch, sample_patch)
from noiseprint_lab.metrics import roc_auc
from noiseprint_lab.training import (TrainConfig, build_dncnn, calibration_patches, export_noiseprint, infonce_loss,
                                     load_dncnn_weights, match_residual_scale, to_input, training_loss, update_average)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    make_camera_corpus(d, cameras=3, images=4, size=128, eval_images=3, seed=1)
    return d


def test_histories_enumerated_and_split():
    assert len(HISTORIES) == 512 and len(set(HISTORIES)) == 512
    assert len(EVAL_HISTORIES) == 64 and not set(EVAL_HISTORIES) & set(TRAIN_HISTORIES)
    assert HISTORIES[0] in TRAIN_HISTORIES  # no editing: the camera's own output
    # The held-out ones cover every edit, JPEG quality and resize factor.
    assert {h.edit for h in EVAL_HISTORIES} == {h.edit for h in HISTORIES}
    assert {h.jpeg for h in EVAL_HISTORIES} == {h.jpeg for h in HISTORIES}
    x = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    assert apply_history(x, HISTORIES[0]).shape == (96, 96, 3)
    half = next(h for h in HISTORIES if h.resize == 0.5 and h.jpeg == 75)
    y = apply_history(x, half)
    assert y.shape == (48, 48, 3) and y.dtype == np.uint8


def test_same_position_is_the_same_phase_of_the_camera_grid_after_any_resize():
    # A camera whose trace is a fixed 8x8-periodic pattern (JPEG blocks, CFA): patches at one
    # position must show the same pattern after every resize, patches at another must not.
    rng = np.random.default_rng(0)
    img = np.tile(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (40, 40, 1))  # 320 px
    for r in RESIZE_FACTORS:
        h = next(x for x in HISTORIES if x.resize == r and x.jpeg is None and x.edit[0] == "identity")
        same = [sample_patch(rng, img, (3, 5), h, 64).astype(int) for _ in range(6)]
        assert all(np.array_equal(p, same[0]) for p in same), f"resize {r}: one position, different patterns"
        other = sample_patch(rng, img, (4, 5), h, 64).astype(int)
        assert np.abs(other - same[0]).mean() > 5, f"resize {r}: another position, the same pattern"


def test_too_small_images_are_an_error_not_an_endless_loop():
    small = Corpus(images={c: [np.zeros((80, 80, 3), np.uint8)] * 2 for c in ("a", "b")}, report=CorpusReport())
    layout = BatchLayout(cameras=2, positions=1, histories=1, per_group=2)
    half = tuple(h for h in TRAIN_HISTORIES if h.resize == 0.5)
    with pytest.raises(ValueError, match=r"no image is large enough for a 64px patch .* resize by 0.5 \(needs 144px"):
        sample_batch(np.random.default_rng(0), small, layout, patch=64, histories=half)


def test_corpus_layout_and_grouped_batches(corpus_dir):
    desc = json.loads((corpus_dir / "cameras.json").read_text())
    assert len(desc["cameras"]) == 3 and set(desc["eval_photos"]).isdisjoint(desc["train_photos"])
    train, held = load_corpus(str(corpus_dir), "train"), load_corpus(str(corpus_dir), "eval")
    assert train.report.cameras == {"simcam00": 4, "simcam01": 4, "simcam02": 4}
    assert held.report.cameras == {"simcam00": 3, "simcam01": 3, "simcam02": 3}
    assert train.report.problems == []
    layout = BatchLayout.for_groups(12, cameras=4, positions=2, per_group=3, corpus_cameras=3)
    assert (layout.cameras, layout.positions, layout.histories) == (3, 2, 2)
    x, labels = sample_batch(np.random.default_rng(0), train, layout, patch=48, unedited_share=1.0)
    assert x.shape == (36, 48, 48, 3) and x.dtype == np.uint8
    assert list(labels) == [g for g in range(12) for _ in range(3)]
    # Only one history slot can be "unedited": with unedited_share=1 the other is still drawn (no endless loop).
    x2, labels2 = sample_batch(np.random.default_rng(1), train, layout, patch=48, unedited_share=1.0)
    assert not np.array_equal(x2, x)  # a different seed, a different batch
    with pytest.raises(ValueError, match="multiple of cameras x positions = 3 x 2"):
        BatchLayout.for_groups(16, cameras=4, positions=2, per_group=3, corpus_cameras=3)
    with pytest.raises(ValueError, match=">= 2 patches per group"):
        BatchLayout.for_groups(12, cameras=3, positions=2, per_group=1, corpus_cameras=3)


def test_corpus_problems_are_reported(tmp_path, corpus_dir):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(corpus_dir / "simcam00", root / "camA")
    shutil.copytree(corpus_dir / "simcam01", root / "camB")
    (root / "camEmpty").mkdir()
    (root / "camA" / "train" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "camSolo").mkdir()
    shutil.copy(next((corpus_dir / "simcam02" / "train").iterdir()), root / "camSolo" / "only.jpg")
    shutil.copy(next((corpus_dir / "simcam02" / "train").iterdir()), root / "loose.jpg")
    c = load_corpus(str(root), "train")
    text = c.report.text()
    assert set(c.cameras) == {"camA", "camB"}
    assert "camEmpty: camera folder has no images" in text
    assert "broken.jpg: unreadable" in text
    assert "camSolo: only 1 usable train image(s), needs 2" in text
    assert "loose.jpg: an image at the corpus root has no camera folder (not guessed)" in text
    # A manifest: explicit camera models, EXIF when asked for, never guessed.
    exif_img = io.BytesIO()
    ex = Image.Exif()
    ex[271], ex[272] = "Acme", "Cam 1"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(
        exif_img, format="JPEG", exif=ex.tobytes())
    (tmp_path / "e1.jpg").write_bytes(exif_img.getvalue())
    (tmp_path / "e2.jpg").write_bytes(exif_img.getvalue())
    (tmp_path / "noexif.jpg").write_bytes((root / "camSolo" / "only.jpg").read_bytes())
    (tmp_path / "m.csv").write_text(f"uri,camera_model\n{tmp_path}/e1.jpg,exif\n{tmp_path}/e2.jpg,exif\n"
                                    f"{tmp_path}/noexif.jpg,exif\n{tmp_path}/e1.jpg,\n")
    m = load_corpus(str(tmp_path / "m.csv"), "train")
    assert m.report.cameras == {"Acme Cam 1": 2}
    assert any("noexif.jpg: no EXIF Make/Model" in p for p in m.report.problems)
    assert any("no camera_model in the manifest" in p for p in m.report.problems)


def test_infonce_loss():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    base = torch.randn(3, 1, 8, 8)
    clustered = base[labels] + 0.01 * torch.randn(6, 1, 8, 8)
    shuffled = base[torch.tensor([0, 1, 2, 0, 1, 2])]
    good, bad = infonce_loss(clustered, labels, 0.05), infonce_loss(shuffled, labels, 0.05)
    assert torch.isfinite(good) and torch.isfinite(bad) and good < 0.01 < bad
    with pytest.raises(ValueError, match="positive"):
        infonce_loss(base, torch.tensor([0, 1, 2]), 0.05)


def test_anchor_term_keeps_the_residual_near_the_starting_network():
    """--anchor adds w x relative squared residual distance to the frozen start: zero at the start,
    positive once the weights moved; refused from scratch (nothing to anchor to)."""
    torch.manual_seed(0)
    start = torch.nn.Conv2d(3, 1, 3, padding=1)
    moved = torch.nn.Conv2d(3, 1, 3, padding=1)
    x, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 0, 1, 1, 2, 2])
    cfg = TrainConfig(corpus="c", output="o", steps=1, init="w.th", anchor=2.0)
    plain = infonce_loss(start(x), labels, cfg.temperature)
    assert torch.allclose(training_loss(start, x, labels, cfg, start), plain)
    with torch.no_grad():
        ref = start(x)
        want = infonce_loss(moved(x), labels, cfg.temperature) + 2.0 * (moved(x) - ref).pow(2).mean() / ref.pow(2).mean()
    assert torch.allclose(training_loss(moved, x, labels, cfg, start), want)
    with pytest.raises(ValueError, match="needs the starting network"):
        training_loss(moved, x, labels, cfg)
    with pytest.raises(ValueError, match="--anchor"):
        TrainConfig(corpus="c", output="o", steps=1, anchor=1.0)  # init scratch


def test_learning_rate_schedule_and_weight_average():
    cos = TrainConfig(corpus="c", output="o", steps=10, lr=1e-3, lr_schedule="cosine", warmup_steps=2)
    lrs = [cos.learning_rate(s, 10) for s in range(10)]
    assert lrs[:2] == pytest.approx([5e-4, 1e-3])  # warm-up
    assert lrs[2] == 1e-3 and all(a > b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.05 * 1e-3  # decays to ~0
    const = TrainConfig(corpus="c", output="o", steps=10, lr=1e-3)
    assert {const.learning_rate(s, 10) for s in range(10)} == {1e-3}
    with pytest.raises(ValueError, match="lr-schedule"):
        TrainConfig(corpus="c", output="o", steps=10, lr_schedule="linear")
    with pytest.raises(ValueError, match="ema-decay"):
        TrainConfig(corpus="c", output="o", steps=10, ema_decay=1.0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    average = {k: v.clone() for k, v in net.state_dict().items()}
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[1].num_batches_tracked += 5
    update_average(average, net, 0.9)
    assert torch.allclose(average["0.weight"], start + 0.1)
    assert int(average["1.num_batches_tracked"]) == 5


def test_roc_auc():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 50), rng.normal(0, 1, 40)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)])
    assert roc_auc(pos, neg) == pytest.approx(brute)
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5


def test_export_has_the_released_format(shared, tmp_path):
    from conftest import NOISEPRINT

    released = read = torch.load(NOISEPRINT, map_location="cpu", weights_only=True)
    model = build_dncnn(str(NOISEPRINT))
    path = export_noiseprint(model.state_dict(), tmp_path / "np.th", step=7)
    out = torch.load(path, map_location="cpu", weights_only=True)
    assert set(out) == {"network", "global_step"} and out["global_step"] == 7
    assert list(out["network"]) == list(released["network"])
    assert all(out["network"][k].shape == v.shape for k, v in read["network"].items())
    assert all(torch.equal(out["network"][k].cpu(), v.cpu()) for k, v in released["network"].items())
    assert set(load_dncnn_weights(str(path))) == set(released["network"])


def test_training_step_learns_a_fixed_batch(shared, corpus_dir):
    """The job's step (start_step, InfoNCE, Adam) on one fixed batch: the loss must collapse.

    Measured: 0.83 -> 0.001 in 6 steps with AVX-512 kernels, 0.83 -> 0.011 with SSE4.1 ones."""
    from conftest import NOISEPRINT
    from noiseprint_lab.training import start_step

    cfg = TrainConfig(corpus=str(corpus_dir), output="unused", init=str(NOISEPRINT), steps=6, batch_groups=4,
                      batch_cameras=1, batch_positions=4, per_group=2, patch=48, lr=5e-4)
    corpus = load_corpus(str(corpus_dir), "train")
    x, labels = sample_batch(np.random.default_rng(0), corpus, cfg.layout(len(corpus.cameras)), cfg.patch,
                             unedited_share=cfg.unedited_share)
    model = build_dncnn(cfg.init)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    for step in range(cfg.steps):
        start_step(model, opt, cfg, step, cfg.steps)
        loss = infonce_loss(model(to_input(x)), torch.from_numpy(labels), cfg.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.1 * losses[0], losses


def test_export_matches_the_starting_residual_scale(shared, corpus_dir):
    from conftest import NOISEPRINT

    reference = build_dncnn(str(NOISEPRINT))
    cfg = TrainConfig(corpus=str(corpus_dir), output="unused", init=str(NOISEPRINT), steps=1, batch_groups=6)
    corpus = load_corpus(str(corpus_dir), "train")
    patches = calibration_patches(corpus, cfg.layout(len(corpus.cameras)), cfg)
    assert patches.shape[1:] == (64, 64, 3) and np.array_equal(
        patches, calibration_patches(corpus, cfg.layout(len(corpus.cameras)), cfg))  # fixed seed
    # A "trained" state whose residuals are inflated and changed in shape, as the contrastive loss lets them be.
    trained = {k: v.clone() for k, v in reference.state_dict().items()}
    trained["0.weight"] += 0.01 * torch.randn_like(trained["0.weight"], generator=torch.Generator().manual_seed(0))
    trained["47.weight"] *= 7.0
    trained["47.bias"] *= 7.0
    scaled, factor = match_residual_scale(trained, reference, patches)
    nets = {}
    for name, sd in (("reference", reference.state_dict()), ("trained", trained), ("scaled", scaled)):
        nets[name] = build_dncnn("scratch")
        nets[name].load_state_dict(sd, strict=True)
        nets[name].eval()
    x = to_input(patches)
    with torch.inference_mode():
        r = {k: m(x) for k, m in nets.items()}
    rms = {k: float(v.pow(2).mean().sqrt()) for k, v in r.items()}
    assert 0.05 < factor < 0.3  # undoes most of the x7
    assert rms["scaled"] == pytest.approx(rms["reference"], rel=1e-4)
    assert torch.allclose(r["scaled"], factor * r["trained"], rtol=1e-4, atol=1e-6)  # exactly a scale: no metric moves
    assert all(torch.equal(scaled[k], trained[k]) for k in trained if not k.startswith("47."))


def test_eval_noiseprint_cli_side_by_side(shared, corpus_dir, tmp_path, capsys):
    from conftest import NOISEPRINT
    from jobs.cli import main

    assert main(["eval-noiseprint", "--weights", str(NOISEPRINT), "--corpus", str(corpus_dir),
                 "--baseline", str(NOISEPRINT), "--pairs", "20"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["weights"] == res["baseline"] and set(res["gain"].values()) == {0.0}  # same weights, same figures
    assert 0.0 <= res["weights"]["pair_auc"] <= 1.0 and res["pairs"] == 40 and res["held_out_images"] == 9
    assert 0.0 < res["weights"]["residual_rms"] < 10.0
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval-noiseprint", "--weights", str(bad), "--corpus", str(corpus_dir)]) == 2
    assert "bad.th" in capsys.readouterr().err


# ---- Ray Train runs (2 CPU workers) --------------------------------------------------------------

# Groups differ in grid position only: the JPEG grid makes that learnable within a few steps.
TRAIN_ARGS = ["--workers", "2", "--batch-groups", "4", "--batch-cameras", "1", "--batch-positions", "4",
              "--per-group", "2", "--patch", "48", "--eval-pairs", "20", "--lr", "5e-4"]


def _ray_tmp() -> str:
    return tempfile.mkdtemp(prefix="tfn", dir="/tmp")


def _run_cli(args: list[str], ray_tmp: str, extra_env: dict | None = None, **kw) -> subprocess.Popen:
    exe = str(Path(sys.executable).with_name("trufor-scan"))
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", **(extra_env or {}))
    return subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, **kw)


@pytest.mark.slow
def test_train_two_workers_export_and_eval(shared, corpus_dir, tmp_path):
    from conftest import NOISEPRINT
    from trufor_core import load_trufor

    out = tmp_path / "run"
    ray_tmp = _ray_tmp()
    try:
        # Paths relative to the caller's directory: the workers run elsewhere and must still find them.
        p = _run_cli(["train-noiseprint", "--corpus", os.path.relpath(corpus_dir, tmp_path), "--output", "run",
                      "--init", os.path.relpath(NOISEPRINT, tmp_path), "--steps", "8", "--checkpoint-every", "4",
                      *TRAIN_ARGS], ray_tmp, cwd=tmp_path)
        log, _ = p.communicate(timeout=600)
    finally:
        kill_ray_processes(ray_tmp)
    assert p.returncode == 0, log[-4000:]
    summary = json.loads(log[log.rindex("\n{") + 1:])
    assert summary["steps"] == 8 and summary["workers"] == 2
    # One progress line per step, no per-report INFO chatter, no once-a-second cleaner warnings.
    progress = [line for line in log.splitlines() if "[train-noiseprint] step " in line]
    assert len(progress) == 8, progress
    assert "Reporting training result" not in log
    assert "Failed to query Ray Train Controller" not in log
    run_dir = out / summary["run"]
    assert sorted(d.name for d in run_dir.iterdir() if d.name.startswith("checkpoint_"))  # checkpoints written
    losses = [pt["loss"] for pt in summary["loss_curve"]]
    assert len(losses) == 8 and all(np.isfinite(losses))
    # No "the loss went down" here: each step draws a fresh batch, so over 8 steps batch-to-batch noise
    # dominates (measured: the last 3 steps' mean 0.536 vs the first 3's 0.509 under SSE4.1 kernels,
    # the other way round under AVX-512). test_training_step_learns_a_fixed_batch checks learning.
    assert "patches/s/worker" in log and "ETA" in log and summary["patches_per_s_worker"] > 0
    ev = summary["evaluation"]
    assert set(ev["weights"]) >= {"pair_auc", "camera_id_accuracy"} and ev["baseline"] is not None
    # Exported at the starting weights' residual scale (calibrated on training patches, checked on held-out ones).
    assert summary["residual_scale_factor"] > 0 and "residual RMS" in log
    assert ev["weights"]["residual_rms"] == pytest.approx(ev["baseline"]["residual_rms"], rel=0.5)
    # The export drops into the scanner: strict load as the Noiseprint++ of TruFor.
    export = Path(summary["export"])
    from trufor_core.checkpoint import write_synthetic_checkpoint

    ckpt = write_synthetic_checkpoint(tmp_path / "UNTRAINED.pth.tar", NOISEPRINT)
    model, info = load_trufor(ckpt, noiseprint=export)
    assert info.noiseprint_sha256 and info.noiseprint_path == str(export)
    trained = torch.load(export, map_location="cpu", weights_only=True)["network"]
    assert torch.equal(model.dncnn[0].weight, trained["0.weight"])
    assert not torch.equal(trained["0.weight"], torch.load(NOISEPRINT, map_location="cpu", weights_only=True)["network"]["0.weight"].cpu())
    # ... and its sha256 shows in the scan rows (the scanner's predictor on a hand-built batch).
    import hashlib

    from pipeline.base.maps import store_maps
    from pipeline.base.schema import table_to_rows
    from pipeline.scan.predictor import PredictorConfig, TruForPredictor

    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pix = np.empty(1, dtype=object)
    pix[0] = rgb
    batch = {"uri": np.array(["x.png"], dtype=object), "status": np.array(["ok"], dtype=object),
             "error": np.array([None], dtype=object), "sha256": np.array(["0" * 64], dtype=object),
             "size_bytes": np.array([1]), "pixels": pix}
    pred = TruForPredictor(PredictorConfig(checkpoint=str(ckpt), output_root=str(tmp_path), run_id="np",
                                           code_version="test", noiseprint_weights=str(export)))
    row = table_to_rows(store_maps(pred(batch), str(tmp_path / "maps")))[0]
    assert row.status == "ok", row.error
    assert row.noiseprint_sha256 == hashlib.sha256(export.read_bytes()).hexdigest()


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_on_object_storage(shared, corpus_dir, moto_endpoint):
    """Corpus, starting weights, checkpoints and export all on the (local) S3 endpoint; the driver is
    killed mid-run and `--resume` continues from the last checkpoint in the bucket.

    (One test for both: each training run costs a Ray start and a model, and the suite's budget is 15 min.)
    """
    import s3fs

    from conftest import NOISEPRINT, S3_KEY, S3_SECRET

    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=moto_endpoint, skip_instance_cache=True)
    fs.mkdir("train-bucket")
    fs.put(str(corpus_dir) + "/", "train-bucket/corpus/", recursive=True)
    fs.put(str(NOISEPRINT), "train-bucket/weights/noiseprint++.th")
    creds = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    # With a weight average and a cosine schedule: both must carry over the kill.
    args = ["train-noiseprint", "--corpus", "s3://train-bucket/corpus", "--output", "s3://train-bucket/runs",
            "--init", "s3://train-bucket/weights/noiseprint++.th", "--steps", "8", "--checkpoint-every", "2",
            "--ema-decay", "0.5", "--lr-schedule", "cosine", "--s3-endpoint", moto_endpoint,
            "--no-match-scale", *TRAIN_ARGS]  # (export = the average exactly; the rescaling has its own test)
    ray_tmp = _ray_tmp()
    p = _run_cli(args, ray_tmp, creds)
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            fs.invalidate_cache()
            if len(fs.glob("train-bucket/runs/*/checkpoint_*/state.pt")) >= 2:  # step 4 is safely stored
                break
            if p.poll() is not None:
                pytest.fail("the run ended before it could be killed: " + p.stdout.read()[-3000:])
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint appeared")
        os.killpg(p.pid, signal.SIGKILL)  # the driver dies mid-run
        p.wait()
    finally:
        kill_ray_processes(ray_tmp)
    ray_tmp2 = _ray_tmp()
    try:
        p2 = _run_cli([*args, "--resume"], ray_tmp2, creds)
        log, _ = p2.communicate(timeout=600)
    finally:
        kill_ray_processes(ray_tmp2)
    assert p2.returncode == 0, log[-4000:]
    assert S3_SECRET not in log
    resumed = [int(line.rsplit("step ", 1)[1]) for line in log.splitlines() if "resumed from the checkpoint at step" in line]
    assert resumed and resumed[0] >= 2 and resumed[0] % 2 == 0
    summary = json.loads(log[log.rindex("\n{") + 1:])
    run = summary["run"]
    assert summary["steps"] == 8 and summary["export"] == f"s3://train-bucket/runs/{run}/noiseprint++.th"
    fs.invalidate_cache()
    assert fs.cat_file("train-bucket/runs/LATEST_RUN").decode().strip() == run
    assert fs.exists(f"train-bucket/runs/{run}/summary.json")
    assert [pt["step"] for pt in summary["loss_curve"]] == list(range(1, 9))  # every step once, curve kept
    steps_after = [int(line.split("step ", 1)[1].split("/", 1)[0]) for line in log.splitlines()
                   if "[train-noiseprint] step " in line]
    assert min(steps_after) == resumed[0] + 1  # the resumed run did not redo finished steps
    ev = summary["evaluation"]  # held-out images and the starting weights read from the bucket too
    assert ev["held_out_images"] == 9 and ev["baseline_path"] == "s3://train-bucket/weights/noiseprint++.th"
    assert ev["baseline"] is not None and ev["weights"] != ev["baseline"]
    # The export is the weight average of the last checkpoint (in the bucket), not its last-step weights.
    last = max(fs.glob(f"train-bucket/runs/{run}/checkpoint_*/state.pt"), key=lambda f: f.split("/")[-2])
    state = torch.load(io.BytesIO(fs.cat_file(last)), map_location="cpu", weights_only=True)
    exported = torch.load(io.BytesIO(fs.cat_file(f"train-bucket/runs/{run}/noiseprint++.th")), map_location="cpu",
                          weights_only=True)["network"]
    assert state["step"] == 8 and state["average"] is not None
    assert all(torch.equal(exported[k], v.contiguous()) for k, v in state["average"].items())
    assert not torch.equal(exported["0.weight"], state["model"]["0.weight"].contiguous())
