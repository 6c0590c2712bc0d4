"""CLI tier: `trufor-scan predict` reproduces the fixtures and reports bad files; weights commands."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import IMAGES, fixture_npz
from tolerances import assert_f32_close

from jobs.cli import main
from jobs.predict import list_inputs, output_path
from trufor_core.weights import WeightsError, download_weights, resolve_weights


@pytest.fixture(scope="module")
def image_dir(shared, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    shutil.copy(IMAGES / "pristine1.jpg", d / "pristine1.jpg")
    (d / "sub").mkdir()
    shutil.copy(IMAGES / "synthetic_odd_333x517.png", d / "sub" / "synthetic_odd_333x517.png")
    (d / "broken.jpg").write_bytes(b"not a jpeg at all")
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("not an image")
    return d


def test_predict_reproduces_fixtures_and_reports_bad_files(image_dir, synth_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", str(synth_ckpt), "--input", str(image_dir), "--output", str(out),
               "--save-np"])
    err = capsys.readouterr().err
    assert rc == 3  # finished, with failures: the exit status says so (docs/operations.md)
    assert "2 errors" in err and "broken.jpg" in err and "empty.png" in err
    assert "skipped (not an image extension)" in err and "notes.txt" in err
    assert "UNTRAINED" in err
    for name, rel in (("pristine1", "pristine1.jpg"), ("synthetic_odd_333x517", "sub/synthetic_odd_333x517.png")):
        ref = fixture_npz(name, f64=True)
        with np.load(out / f"{rel}.npz") as z:
            assert {"map", "conf", "score", "imgsize", "np++"} <= set(z.files)
            assert z["map"].dtype == np.float32 and z["conf"].dtype == np.float32
            assert z["score"].dtype == np.float64 and z["score"].shape == ()
            assert z["imgsize"].dtype == np.int64 and tuple(z["imgsize"]) == tuple(ref["imgsize"])
            for field in ("score", "map", "conf", "np++"):
                assert_f32_close(z[field], ref[field], field)
            assert bool(z["weights_untrained"])
    assert not (out / "broken.jpg.npz").exists()
    # Like the official script, existing outputs are kept unless asked otherwise.
    before = (out / "pristine1.jpg.npz").stat().st_mtime_ns
    rc = main(["predict", "--checkpoint", str(synth_ckpt), "--input", str(image_dir / "*.jpg"), "--output", str(out)])
    assert "1 already existed" in capsys.readouterr().err
    assert (out / "pristine1.jpg.npz").stat().st_mtime_ns == before


def test_predict_single_file_to_npz_via_console_script(shared, synth_ckpt, tmp_path):
    target = tmp_path / "result.npz"
    exe = Path(sys.executable).with_name("trufor-scan")
    env = dict(os.environ, TRUFOR_WEIGHTS=str(synth_ckpt))
    p = subprocess.run([str(exe), "predict", "--input", str(IMAGES / "pristine1.jpg"), "--output", str(target)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    with np.load(target) as z:
        assert "np++" not in z.files
        assert_f32_close(z["score"], fixture_npz("pristine1", f64=True)["score"], "score")


def test_output_naming_mirrors_official(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    f = tmp_path / "a" / "b" / "x.png"
    f.write_bytes(b"")
    assert output_path(str(f), "out", str(f)) == os.path.join("out", "x.png.npz")
    assert output_path(str(tmp_path / "a"), "out", str(f)) == os.path.join("out", "b", "x.png.npz")
    assert output_path(str(tmp_path / "a") + "/**/*.png", "out", str(f)) == os.path.join("out", "b", "x.png.npz")
    assert output_path(str(f), "single.npz", str(f)) == "single.npz"
    images, others, refused = list_inputs(str(tmp_path / "a"))
    assert images == [str(f)] and others == [] and refused == []
    with pytest.raises(FileNotFoundError, match="neither"):
        list_inputs(str(tmp_path / "missing"))
    # A 250-character name (+ ".npz" is over 255 bytes once the official suffix is added to a longer
    # one): shortened with a hash, distinct for two names sharing their first 240 characters.
    long_a, long_b = "a" * 240 + "-one.png", "a" * 240 + "-two.png"
    outs = {output_path(str(tmp_path), "out", os.path.join(str(tmp_path), n)) for n in (long_a, long_b)}
    assert len(outs) == 2 and all(len(os.path.basename(o).encode()) <= 255 and o.endswith(".npz") for o in outs)


def test_predict_lists_like_scan_and_survives_hostile_names(synth_ckpt, tmp_path, capsys):
    """`predict` walks a directory with the scan's walker: a symlink loop is one refused entry (the
    recursive glob it replaced turned 22 files into 2,463 inputs), a FIFO is never opened, names
    of 250 characters and names that are not UTF-8 are scored and written."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    img = _png(64, 64)
    (d / ("n" * 246 + ".png")).write_bytes(img)
    (d / "sub" / "ok.png").write_bytes(img)
    os.symlink("..", d / "sub" / "loop")
    os.mkfifo(d / "pipe.png")
    raw = os.fsencode(str(d)) + b"/caf\xe9.png"  # Latin-1 name: not UTF-8
    with open(raw, "wb") as f:
        f.write(img)
    images, others, refused = list_inputs(str(d))
    assert len(images) == 3 and others == []
    assert sorted((os.path.basename(p), m.split(":")[0]) for p, m in refused) == [
        ("loop", "symlink loop"), ("pipe.png", "not a regular file")]
    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", str(synth_ckpt), "--input", str(d), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 3 and "3 written" in err and "2 errors" in err, err
    written = sorted(os.listdir(os.fsencode(str(out))) + [os.path.join(b"sub", n) for n in os.listdir(os.fsencode(str(out / "sub")))])
    assert b"caf\xe9.png.npz" in written and b"sub/ok.png.npz" in written
    assert any(len(n) <= 255 and n.startswith(b"nnnn") for n in written)


def _png(h: int, w: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_missing_weights_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRUFOR_WEIGHTS", raising=False)
    monkeypatch.setenv("TRUFOR_CACHE_DIR", str(tmp_path / "cache"))
    img = tmp_path / "i.png"
    img.write_bytes(b"")
    rc = main(["predict", "--input", str(img), "--output", str(tmp_path / "o"), "--no-download"])
    err = capsys.readouterr().err
    assert rc == 2 and "weights download" in err and "TRUFOR_WEIGHTS" in err


# ---- weights download against a local HTTP server ----------------------------------------------


@pytest.fixture()
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def _weights_zip(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("weights/trufor.pth.tar", payload)
        zf.writestr("weights/README.txt", "readme")
    return buf.getvalue()


def test_download_verifies_md5_and_unpacks(http_root, tmp_path, capsys):
    root, base = http_root
    data = _weights_zip(b"checkpoint-bytes")
    (root / "w.zip").write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    rc = main(["weights", "download", "--dir", str(tmp_path / "d"), "--url", f"{base}/w.zip", "--md5", md5])
    out = capsys.readouterr().out
    assert rc == 0
    assert (tmp_path / "d" / "trufor.pth.tar").read_bytes() == b"checkpoint-bytes"
    assert "non-profit" in out and "GRIP-UNINA" in out
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["trufor.pth.tar"]


def test_download_wrong_checksum_leaves_nothing(http_root, tmp_path):
    root, base = http_root
    (root / "w.zip").write_bytes(_weights_zip(b"tampered"))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        download_weights(tmp_path / "d", url=f"{base}/w.zip", log=lambda m: None)  # official MD5
    assert list((tmp_path / "d").iterdir()) == []
    with pytest.raises(WeightsError, match="could not download"):
        download_weights(tmp_path / "d", url=f"{base}/missing.zip", log=lambda m: None)


def test_resolve_order_and_first_use_download(http_root, tmp_path, monkeypatch):
    root, base = http_root
    data = _weights_zip(b"ckpt")
    (root / "w.zip").write_bytes(data)
    monkeypatch.setenv("TRUFOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TRUFOR_WEIGHTS", raising=False)
    with pytest.raises(WeightsError, match="weights download"):
        resolve_weights(None)
    logs: list[str] = []
    got = resolve_weights(None, allow_download=True, log=logs.append, url=f"{base}/w.zip",
                          md5=hashlib.md5(data).hexdigest())
    assert got == tmp_path / "cache" / "trufor.pth.tar" and any("non-profit" in m for m in logs)
    assert resolve_weights(None) == got  # cached now
    env_file = tmp_path / "env.pth"
    env_file.write_bytes(b"x")
    monkeypatch.setenv("TRUFOR_WEIGHTS", str(env_file))
    assert resolve_weights(None) == env_file
    arg_file = tmp_path / "arg.pth"
    arg_file.write_bytes(b"x")
    assert resolve_weights(str(arg_file)) == arg_file
    with pytest.raises(WeightsError, match="not a file"):
        resolve_weights(str(tmp_path / "nope.pth"))


def test_synthesize_command_marks_untrained(shared, tmp_path, capsys):
    from conftest import NOISEPRINT

    from trufor_core.checkpoint import read_torch_file

    out = tmp_path / "UNTRAINED.pth.tar"
    assert main(["weights", "synthesize", "--out", str(out), "--noiseprint", str(NOISEPRINT)]) == 0
    assert "UNTRAINED" in capsys.readouterr().err
    raw = read_torch_file(out)
    assert raw["trufor_scan_untrained"] is True and len(raw["state_dict"]) == 952


def test_command_table_derives_the_parser_and_the_old_names_still_work(tmp_path, capsys):
    """The parser, the command list and the old names all come from COMMAND_TABLE: every command's
    options are exactly its config's CLI fields; an old name builds the same config, with a note."""
    import argparse

    from jobs.cli import ALIASES, COMMAND_TABLE, COMMANDS, build_parser, config_class, find_command
    from pipeline.base.options import cli_fields, from_args

    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(top.choices) == {c.words[0] for c in COMMAND_TABLE} | set(ALIASES)
    assert COMMANDS == tuple(c.name for c in COMMAND_TABLE) and len(set(COMMANDS)) == len(COMMANDS)
    for cmd in COMMAND_TABLE:
        assert find_command([*cmd.words, "--x"]) is cmd
        sub = top.choices[cmd.words[0]]
        if len(cmd.words) == 2:
            sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[cmd.words[1]]
        dests = {a.dest for a in sub._actions if a.dest != "help"}
        assert dests == {f.name for f in cli_fields(config_class(cmd), cmd.name)}, cmd.name
        with pytest.raises(SystemExit) as ex:  # every --help prints (a bare % in a help string once broke it)
            main([*cmd.words, "--help"])
        assert ex.value.code == 0 and "usage: trufor-scan " + cmd.name in capsys.readouterr().out
    new = build_parser("noiseprint make-corpus").parse_args(["noiseprint", "make-corpus", "--out", "c", "--images", "3"])
    old = build_parser("noiseprint make-corpus").parse_args(["make-camera-corpus", "--out", "c", "--images", "3"])
    assert new.cmd is old.cmd and from_args(config_class(new.cmd), new, new.cmd.name) == \
        from_args(config_class(old.cmd), old, old.cmd.name)
    assert main(["eval-noiseprint", "--weights", str(tmp_path / "none.th"), "--corpus", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "`eval-noiseprint` is now `noiseprint eval`" in err and err.count("\n") == 2
    with pytest.raises(SystemExit):
        main(["noiseprint", "train"])  # --corpus and --output are required
    assert "--corpus" in capsys.readouterr().err


def test_progress_off_a_terminal_is_whole_lines():
    import io

    from pipeline.base.progress import note_slow, progress

    buf = io.StringIO()
    bar = progress(3, "scan", every_s=0.0, stream=buf)
    bar.update(2)
    note_slow(bar, "s3://b/huge.tif", 75.0)
    bar.update(1)
    bar.close()
    text = buf.getvalue()
    assert "\r" not in text and text.endswith("\n") and "s3://b/huge.tif: 75 s for one image\n" in text
    assert all(line.startswith(("scan:", "s3://b/huge.tif")) for line in text.splitlines())


def test_known_harmless_lines_leave_stderr_for_a_log(tmp_path, capfd):
    """fd-2 lines of a known-harmless kind go to the log file, every other line to stderr, in order."""
    import os

    from pipeline.base.quiet import harmless_lines_to

    log = tmp_path / "harmless.log"
    with harmless_lines_to(str(log)):
        os.write(2, b"first line\n[2026 E 1 1] core_worker.cc:2465: Actor with class name: 'X' and ID: 'y' has "
                    b"constructor arguments in the object store and max_restarts > 0. See ...\n")
        os.write(2, b"last line, no newline")
    err = capfd.readouterr().err
    assert err == "first line\nlast line, no newline"
    assert "core_worker.cc:2465" in log.read_text()


def test_a_single_valued_option_given_twice_is_refused(capsys):
    """`--min-score 0.5 ... --min-score 0.9` is refused (argparse alone keeps the last silently); a list
    option given twice accumulates (tests/test_review.py: export --uri A --uri B)."""
    from jobs.cli import build_parser

    with pytest.raises(SystemExit) as ex:
        build_parser("top").parse_args(["top", "out", "--min-score", "0.5", "--min-score", "0.9"])
    assert ex.value.code == 2 and "argument --min-score: given more than once" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser("predict").parse_args(["predict", "-in", "a.jpg", "--input", "b.jpg", "--output", "o"])
    assert "argument --input: given more than once" in capsys.readouterr().err
    args = build_parser("export").parse_args(["export", "out", "--uri", "a", "b", "--uri", "c", "--out", "x"])
    assert args.uri == ["a", "b", "c"]


def test_weights_get_mantranet_verifies_the_git_blob_id(http_root, tmp_path, capsys):
    """Downloaded or copied from a file (offline), the weights are kept only when their git object id is the
    official repository's; the licence is printed."""
    import subprocess

    from mantranet_core.weights import FILE_NAME, git_blob_sha1

    root, base = http_root
    (root / "m.h5").write_bytes(b"keras weights \x00 bytes")
    blob = subprocess.run(["git", "hash-object", str(root / "m.h5")], capture_output=True, text=True,
                          timeout=30).stdout.strip()
    assert git_blob_sha1(root / "m.h5") == blob  # the same id git computes
    rc = main(["weights", "get", "mantranet", "--dir", str(tmp_path / "d"), "--url", f"{base}/m.h5", "--blob-sha1", blob])
    captured = capsys.readouterr()
    assert rc == 0 and (tmp_path / "d" / FILE_NAME).read_bytes() == (root / "m.h5").read_bytes()
    assert "NON-COMMERCIAL" in captured.err and "USC" in captured.err
    assert captured.out.strip() == str(tmp_path / "d" / FILE_NAME)
    # the official id: these bytes are not it -> one line, nothing kept
    assert main(["weights", "get", "mantranet", "--dir", str(tmp_path / "e"), "--url", f"{base}/m.h5"]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    assert list((tmp_path / "e").iterdir()) == []
    rc = main(["weights", "get", "mantranet", "--dir", str(tmp_path / "f"), "--from", str(root / "m.h5"),
               "--blob-sha1", blob])
    assert rc == 0 and (tmp_path / "f" / FILE_NAME).is_file()
    assert main(["weights", "get", "mantranet", "--dir", str(tmp_path / "g"), "--url", f"{base}/missing.h5"]) == 2
    assert "could not download" in capsys.readouterr().err


def test_predict_mantranet_writes_map_and_score(mantranet_h5, tmp_path, capsys):
    """`predict --model mantranet`: the full-resolution map the official demo returns (within the float32
    tolerance of its own output on this fixture), its maximum as the score, the weights said to be untrained."""
    from conftest import IMAGES, mantranet_npz
    from tolerances import MANTRANET_F32_ATOL

    out = tmp_path / "p.npz"
    rc = main(["predict", "--model", "mantranet", "--checkpoint", str(mantranet_h5), "--input",
               str(IMAGES / "pristine1.jpg"), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and "ManTra-Net weights are UNTRAINED" in err
    z, ref = np.load(out), mantranet_npz("pristine1")
    assert z["map"].dtype == np.float32 and z["map"].shape == ref["mask"].shape
    assert np.abs(z["map"] - ref["mask"]).max() < MANTRANET_F32_ATOL["mask_vs_official_f32"]
    assert float(z["score"]) == float(z["map"].max()) and bool(z["weights_untrained"])
    rc = main(["predict", "--model", "mantranet", "--checkpoint", str(mantranet_h5), "--input",
               str(IMAGES / "pristine1.jpg"), "--output", str(tmp_path / "q.npz"), "--backend", "openvino"])
    assert rc == 2 and "runs eager in fp32" in capsys.readouterr().err
