"""Train Noiseprint++ in one process on exactly the batches `noiseprint train --workers W` would use.

Rank r's batch of step s comes from the same seed ([seed, s, r]) and the gradients of the W
batches are averaged, which is what DDP does; the learning-rate schedule and weight average are
the job's own (`TrainConfig`). The export is then evaluated by `noiseprint eval`'s code. It
exists to compare training settings and seeds side by side without Ray's start-up and helper
processes (two runs with ``--threads-per-worker 1`` fit on 2 cores at once).

    python bench/train_recipe.py --corpus corp8n --output /tmp/recipe-s1 \
        --init ../shared/weights/noiseprint++.th --steps 130 --seed 1 [noiseprint train options]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.noiseprint_train import add_arguments, config_from_args  # noqa: E402
from noiseprint_lab.data import load_corpus, sample_batch  # noqa: E402
from noiseprint_lab.metrics import evaluate  # noqa: E402
from noiseprint_lab.training import (build_dncnn, clone_state, export_noiseprint, final_weights,  # noqa: E402
                                     start_step, steps_for, to_input, training_loss, update_average)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--skip-baseline", action="store_true", help="evaluate the trained weights only")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="> 0: also export the weights every N steps to OUTPUT/step<N>/ (evaluate them with "
                        "noiseprint eval) to see where in a run the pair AUC moves")
    a = p.parse_args()
    cfg = config_from_args(a)
    torch.set_num_threads(cfg.threads_per_worker)
    corpus = load_corpus(cfg.corpus, "train")
    layout = cfg.layout(len(corpus.cameras))
    steps = steps_for(cfg, sum(corpus.report.cameras.values()))
    model = build_dncnn(cfg.init)
    reference = None if cfg.init == "scratch" else build_dncnn(cfg.init)  # the export's residual scale
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    average = clone_state(model) if cfg.ema_decay else None
    out = Path(cfg.output)
    t0, curve = time.perf_counter(), []
    for step in range(steps):
        start_step(model, opt, cfg, step, steps)
        opt.zero_grad()
        loss_sum = 0.0
        for rank in range(cfg.workers):
            x, labels = sample_batch(np.random.default_rng([cfg.seed, step, rank]), corpus, layout, cfg.patch,
                                     unedited_share=cfg.unedited_share)
            loss = training_loss(model, to_input(x), torch.from_numpy(labels), cfg, reference) / cfg.workers
            loss.backward()  # gradients add up over the ranks' batches: DDP's average
            loss_sum += float(loss.detach())
        opt.step()
        if average is not None:
            update_average(average, model, cfg.ema_decay)
        curve.append(loss_sum)
        if (step + 1) % 10 == 0:
            rate = (step + 1) * len(x) * cfg.workers / (time.perf_counter() - t0)
            print(f"step {step + 1}/{steps} mean loss (last 10) {np.mean(curve[-10:]):.3f} {rate:.1f} patches/s",
                  flush=True)
        if a.snapshot_every and (step + 1) % a.snapshot_every == 0 and step + 1 < steps:
            snap, _ = final_weights(model.state_dict(), average, cfg, corpus, layout, reference)
            export_noiseprint(snap, out / f"step{step + 1}" / "noiseprint++.th", step + 1)
    train_s = time.perf_counter() - t0
    weights, scale = final_weights(model.state_dict(), average, cfg, corpus, layout, reference)
    export = export_noiseprint(weights, out / "noiseprint++.th", steps)
    baseline = None if a.skip_baseline or cfg.init == "scratch" else cfg.init
    ev = None if cfg.eval_pairs == 0 else evaluate(str(export), cfg.corpus, baseline=baseline, n_pairs=cfg.eval_pairs,
                                                    patch=cfg.patch, seed=cfg.eval_seed)
    loss_10 = [round(float(np.mean(curve[k:k + 10])), 3) for k in range(0, steps, 10)]
    summary = {"seed": cfg.seed, "lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps,
               "ema_decay": cfg.ema_decay, "temperature": cfg.temperature, "anchor": cfg.anchor, "residual_scale_factor": scale,
               "steps": steps, "train_s": round(train_s, 1),
               "loss_by_10_steps": loss_10, "evaluation": ev}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
