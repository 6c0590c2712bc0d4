"""Integration: the README's tour, its lines run as written, one process each, as a new user would
after the two set-up commands (the tool on PATH): the demo archive in a bucket on a real local S3
endpoint (moto's server), OUTPUT in another bucket, untrained test weights."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

S3_KEY, S3_SECRET = "tour-key", "tour-secret"
PRISTINE = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "stereo_motorcycle")


def tour_lines() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- tour:.*?-->\s*```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_tour_runs_as_written(shared, synth_ckpt, moto_endpoint, tmp_path):
    import s3fs

    from jobs.demo_archive import make_demo_archive

    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=moto_endpoint)
    # moto keeps one store per process: other modules' tests may have made these buckets already.
    for bucket in ("crawl", "scans"):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    for prefix in ("crawl/incoming", "scans/crawl"):
        if fs.exists(prefix):
            fs.rm(prefix, recursive=True)
    demo = tmp_path / "demo"
    make_demo_archive(demo)
    fs.put(str(demo) + "/", "crawl/incoming/", recursive=True)
    fs.put(str(demo / "coffee_spliced.jpg"), "crawl/incoming/x.jpg")  # the tour's `export --uri .../x.jpg`
    work = tmp_path / "work"
    work.mkdir()
    (work / "pristine.csv").write_text("uri\n" + "".join(f"s3://crawl/incoming/{n}.jpg\n" for n in PRISTINE))
    env = dict(os.environ, AWS_ENDPOINT_URL=moto_endpoint, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET,
               TRUFOR_WEIGHTS=str(synth_ckpt), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    ran: list[tuple[list[str], subprocess.CompletedProcess]] = []
    for argv in tour_lines():
        assert argv[0] == "trufor-scan", argv
        p = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        ran.append((argv, p))
        # The sweep finishes with one error row (the demo's truncated file): exit 3; everything else 0.
        assert p.returncode == (3 if argv[1] == "sweep" else 0), (argv, p.stderr[-3000:])
        assert "Traceback" not in p.stderr, (argv, p.stderr[-3000:])

    def run(*words: str) -> subprocess.CompletedProcess:
        return next(p for argv, p in ran if all(w in argv for w in words))

    sweep = run("sweep")
    assert "UNTRAINED test weights" in sweep.stderr and "starting Ray" in sweep.stderr
    assert "listed 12, 12 to scan" in sweep.stderr and "skipped 1" in sweep.stderr
    top = run("top", "--min-score")
    assert "s3://crawl/incoming/" in top.stdout or "no image scores at or above 0.8" in top.stderr
    formats = next(p for argv, p in ran if argv[1] == "query" and "format" in argv[3])
    assert "JPEG" in formats.stdout
    runs = next(p for argv, p in ran if argv[1] == "query" and "runs" in argv[3])
    assert "complete" in runs.stdout
    calibrated = run("top", "--calibrated")
    assert "s3://crawl/incoming/" in calibrated.stdout or "the calibration flags none" in calibrated.stderr
    assert "UNTRAINED" in run("calibrate").stderr
    dup = run("duplicates")
    assert "coffee_spliced" in dup.stdout and "clusters of near-copies" in dup.stderr, dup.stdout + dup.stderr
    contra = run("contradictions")  # the demo's splice carries credentials declaring an unedited capture
    assert "coffee_spliced" in contra.stdout or "declare no edit in their credentials" in contra.stderr, contra.stderr
    assert (work / "review" / "index.html").is_file()
    bundles = [Path(line) for line in run("export").stdout.split()]
    assert len(bundles) == 1 and (work / bundles[0] / "reproduce.sh").is_file()
    assert "noiseprint" in run("--help").stdout and "evaluate" in run("--help").stdout
