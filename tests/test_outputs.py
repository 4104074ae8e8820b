"""The one output writer: new paths or xai-jax's own outputs of the same kind only, atomic, umask, concurrency."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pathlib
import stat

import numpy as np
import pytest
from PIL import Image

from conftest import snapshot
from xai_jax import outputs
from xai_jax.errors import XaiJaxError


def tree(root) -> dict[str, bytes | None]:
    return snapshot(root, contents=True)


def write_result(path, kind="nma", value="1", **kwargs):
    with outputs.atomic_dir(path, kind, **kwargs) as tmp:
        with open(os.path.join(tmp, "value.txt"), "w") as f:
            f.write(value)


def png_bytes(seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_new_folder_is_written_whole_and_marked(tmp_path):
    write_result(tmp_path / "out", value="first")
    assert (tmp_path / "out" / "value.txt").read_text() == "first"
    found = json.loads((tmp_path / "out" / outputs.MARKER).read_text())
    assert found["kind"] == "nma" and found["version"] and found["created"]
    assert outputs.existing_kind(tmp_path / "out") == "nma"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left beside it


def test_an_earlier_result_of_the_same_kind_is_replaced_and_no_other(tmp_path):
    write_result(tmp_path / "out", value="first")
    write_result(tmp_path / "out", value="second")
    assert (tmp_path / "out" / "value.txt").read_text() == "second"
    with pytest.raises(XaiJaxError, match="xai-jax nma output; xai-jax replaces only its own dec outputs"):
        write_result(tmp_path / "out", kind="dec")
    assert (tmp_path / "out" / "value.txt").read_text() == "second"
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("setup, message", [
    ("folder with files", "exists and is not written by xai-jax; .* e.g. .*photos-2"),
    ("empty folder", "exists and is not written by xai-jax"),
    ("regular file", "is a file; give a new folder"),
    ("forged marker", "exists and is not written by xai-jax"),
    ("symbolic link", "is a symbolic link"),
])
def test_what_xai_jax_did_not_write_is_refused_before_any_work_and_kept(tmp_path, setup, message):
    target = tmp_path / "photos"
    if setup == "folder with files":
        target.mkdir()
        (target / "holiday.jpg").write_bytes(b"\xff\xd8 not really")
    elif setup == "empty folder":
        target.mkdir()
    elif setup == "regular file":
        target.write_text("my notes")
    elif setup == "forged marker":  # a marker that is not ours (damaged) does not make a folder replaceable
        target.mkdir()
        (target / outputs.MARKER).write_text("[1, 2")
    else:
        (tmp_path / "real").mkdir()
        target.symlink_to(tmp_path / "real")
    before = tree(tmp_path)
    with pytest.raises(XaiJaxError, match=message):
        outputs.check_output(target, "nma")
    worked = []
    with pytest.raises(XaiJaxError, match=message):
        with outputs.atomic_dir(target, "nma"):
            worked.append(True)
    assert not worked  # refused before the body runs
    assert tree(tmp_path) == before


def test_the_current_folder_is_refused(tmp_path, monkeypatch):
    (tmp_path / "data.npz").write_bytes(b"keep me")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(XaiJaxError, match=r"--out \. exists and is not written by xai-jax.*e\.g\. \./xai-jax-out"):
        outputs.check_output(".", "nma")
    assert tree(tmp_path) == {"data.npz": b"keep me"}


def test_inputs_are_never_replaced_even_inside_an_earlier_result(tmp_path):
    write_result(tmp_path / "run1")
    (tmp_path / "run1" / "probs.npz").write_bytes(b"input")
    before = tree(tmp_path)
    for given in (tmp_path / "run1" / "probs.npz", tmp_path / "run1"):
        with pytest.raises(XaiJaxError, match="which this command reads"):
            outputs.check_output(tmp_path / "run1", "nma", inputs=[None, given])
    assert tree(tmp_path) == before
    outputs.check_output(tmp_path / "run2", "nma", inputs=[tmp_path / "run1" / "probs.npz"])


@pytest.mark.parametrize("where, message", [
    ("missing parent", "its folder .* does not exist"),
    ("under a file", "is a file, not a folder"),
    ("proc", "takes no new files"),
])
def test_unwritable_places_are_one_line_and_leave_nothing(tmp_path, where, message):
    (tmp_path / "notes.txt").write_text("x")
    target = {"missing parent": tmp_path / "no" / "such" / "out", "under a file": tmp_path / "notes.txt" / "out",
              "proc": "/proc/xai-jax-out"}[where]
    before = tree(tmp_path)
    with pytest.raises(XaiJaxError, match=message) as caught:
        with outputs.atomic_dir(target, "nma"):
            pass
    assert "\n" not in str(caught.value)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("error", [RuntimeError("a bug"), KeyboardInterrupt()])
def test_an_interruption_leaves_the_earlier_result_and_no_temporary_files(tmp_path, error):
    write_result(tmp_path / "out", value="first")
    with pytest.raises(type(error)):
        with outputs.atomic_dir(tmp_path / "out", "nma") as tmp:
            with open(os.path.join(tmp, "value.txt"), "w") as f:
                f.write("half")
            raise error
    assert (tmp_path / "out" / "value.txt").read_text() == "first"
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_result(tmp_path / "out")
        outputs.write_file(tmp_path / "figure.png", png_bytes(), "dec.similar")
        outputs.save_npz(tmp_path / "scores.npz", {"a": np.arange(3)}, "predict")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o777 & ~umask
    for path in (tmp_path / "out" / "value.txt", tmp_path / "figure.png", tmp_path / "scores.npz"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path


def test_single_files_are_marked_replaced_only_when_ours_and_stay_readable(tmp_path):
    png, npz = tmp_path / "figure.png", tmp_path / "scores.npz"
    outputs.write_file(png, png_bytes(0), "dec.similar")
    outputs.write_file(png, png_bytes(1), "dec.similar")  # our own: replaced
    with Image.open(png) as image:  # the marker chunk keeps the file a valid PNG with the same pixels
        np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(png_bytes(1)))))
    assert outputs.existing_kind(png) == "dec.similar"
    outputs.save_npz(npz, {"logits": np.ones((2, 3))}, "predict")
    outputs.save_npz(npz, {"logits": np.zeros((2, 3))}, "predict")
    assert np.load(npz)["logits"].sum() == 0 and outputs.existing_kind(npz) == "predict"

    theirs_png, theirs_npz = tmp_path / "theirs.png", tmp_path / "theirs.npz"
    theirs_png.write_bytes(png_bytes(2))
    np.savez(theirs_npz, logits=np.ones(2))
    before = tree(tmp_path)
    for path, kind in ((theirs_png, "dec.similar"), (png, "cladec.explain")):
        with pytest.raises(XaiJaxError, match="exists and is"):
            outputs.write_file(path, png_bytes(3), kind)
    with pytest.raises(XaiJaxError, match="exists and is not written by xai-jax"):
        outputs.save_npz(theirs_npz, {"logits": np.zeros(2)}, "predict")
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(XaiJaxError, match="is a folder; give a file name"):
        outputs.save_npz(tmp_path / "folder.npz", {"a": np.zeros(1)}, "predict")
    assert tree(tmp_path) == {**before, "folder.npz": None}


def _write_many(args):
    path, worker, rounds = args
    errors = []
    for r in range(rounds):
        try:
            with outputs.atomic_dir(path, "nma") as tmp:
                for i in range(20):  # several files, so that a torn result would show
                    with open(os.path.join(tmp, f"part{i}.txt"), "w") as f:
                        f.write(f"{worker}-{r}")
        except XaiJaxError as err:
            errors.append(str(err))
    return errors


def test_concurrent_writers_into_one_path_each_end_whole_or_with_one_line(tmp_path):
    target = str(tmp_path / "out")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        errors = sum(pool.map(_write_many, [(target, w, 15) for w in range(4)]), [])
    assert all("\n" not in e for e in errors), errors
    parts = {(tmp_path / "out" / f"part{i}.txt").read_text() for i in range(20)}
    assert len(parts) == 1  # one writer's whole result, never a mix
    assert sorted(os.listdir(tmp_path)) == ["out"]  # every temporary and set-aside folder is gone


def test_replace_file_edits_one_file_of_its_own_output_only(tmp_path):
    with outputs.atomic_dir(tmp_path / "r", "nma") as tmp:
        (pathlib.Path(tmp) / "nma.json").write_text('{"old": 1}')
    before = snapshot(tmp_path / "r", contents=True)
    outputs.replace_file(tmp_path / "r", "nma.json", b'{"new": 2}', "nma")
    after = snapshot(tmp_path / "r", contents=True)
    assert after.pop("nma.json") == b'{"new": 2}' and before.pop("nma.json") == b'{"old": 1}'
    assert after == before  # the marker untouched, nothing left beside
    for name in ["../x.json", "sub/x.json", outputs.MARKER, ".hidden", ""]:
        with pytest.raises(XaiJaxError, match="not a file name"):
            outputs.replace_file(tmp_path / "r", name, b"x", "nma")
    with pytest.raises(XaiJaxError, match="xai-jax edits only its own www outputs"):
        outputs.replace_file(tmp_path / "r", "nma.json", b"x", "www")  # another kind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "nma.json").write_text("my file")
    with pytest.raises(XaiJaxError, match="not written by xai-jax"):
        outputs.replace_file(tmp_path / "mine", "nma.json", b"x", "nma")
    assert (tmp_path / "mine" / "nma.json").read_text() == "my file"
    assert snapshot(tmp_path / "r", contents=True)["nma.json"] == b'{"new": 2}'
