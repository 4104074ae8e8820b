"""Passes over several processes and resumed passes: the same result as one uninterrupted process.

Two local CPU processes (one device each, gloo collectives) run ``xai-jax nma``, ``xai-jax www
contributions`` and ``xai-jax predict`` over 512 CIFAR-10 test images with ResNet-20; the one-process
result is computed in this process with the same commands. Kill-and-resume: a pass saving every batch is SIGKILLed once a checkpoint
exists, resumed, and compared with the uninterrupted run, in one process and in two. The subprocesses share
a persistent compilation cache, so that only the first of them compiles.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, shared_path
from xai_jax.data.batcher import Batches

pytestmark = pytest.mark.xdist_group("distributed")  # their subprocesses are not run beside each other

LIMIT, BATCH = 512, 64  # 8 global batches; 32 images a batch per process with two


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """ResNet-20's CIFAR-10 weights as an xai_jax checkpoint: the subprocesses then start without PyTorch."""
    from xai_jax import models
    from xai_jax import weights as W
    path = tmp_path_factory.mktemp("weights") / "resnet20"
    spec = models.get("cifar_resnet20")
    W.save_variables(path, W.load(spec, shared_path("cifar10_resnet", "resnet20-12fca82f.th")), {"model": spec.name})
    return str(path)


@pytest.fixture(scope="module")
def nma_argv(weights):
    return lambda out, *extra: ["--quiet", "nma", *_inputs(weights), "--no-names", "--dataset", "cifar10",
                                "--out", str(out), *extra]


@pytest.fixture(scope="module")
def www_argv(weights):
    return lambda out, *extra: ["--quiet", "www", "contributions", *_inputs(weights), "--tap", "pool",
                                "--out", str(out), *extra]


@pytest.fixture(scope="module")
def predict_argv(weights):
    return lambda out: ["--quiet", "predict", *_inputs(weights), "--taps", "pool", "--out", str(out)]


def _inputs(weights: str) -> list[str]:
    data = f"jpeg-npz:{shared_path('cifar10', 'cifar10_test_jpeg.npz')}"
    return ["--model", "cifar_resnet20", "--weights", weights, "--data", data, "--limit", str(LIMIT),
            "--sample-seed", "0", "--batch-size", str(BATCH)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XAI_JAX_NO_PROGRESS="1",
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


# Runs the commands given as JSON lists one after the other in this process: the cluster is joined once.
_DRIVER = ("import json, sys\nfrom xai_jax.cli.main import main\n"
           "sys.exit(next((rc for rc in map(main, json.loads(sys.argv[1])) if rc), 0))")


def launch(commands: list[list[str]], processes: int, cwd, cache) -> list[subprocess.Popen]:
    """``processes`` processes that each run ``commands`` (with the cluster flags when more than one)."""
    port = _free_port()
    started = []
    for rank in range(processes):
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                 "--process-id", str(rank)] if processes > 1 else []
        argv = [command + flags for command in commands]
        started.append(subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps(argv)], cwd=cwd, env=_env(cache),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return started


def finish(started: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    """Waits for every process; fails with their stderr unless all exit 0. Returns their stdout and stderr."""
    outs = []
    for process in started:
        out, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"exit {process.returncode}: {err[-3000:]}"
        outs.append(out + err)
    return outs


def kill_after_checkpoint(started: list[subprocess.Popen], checkpoint, timeout: float = 300) -> int:
    """SIGKILLs every process as soon as a whole checkpoint of the first fold exists; returns its position."""
    fold = checkpoint / "fold-0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [int(p.name) for p in fold.iterdir() if p.name.isdigit()] if fold.is_dir() else []
        if steps or any(p.poll() is not None for p in started):
            break
        time.sleep(0.02)
    for process in started:
        process.kill()
    for process in started:
        process.communicate(timeout=60)
    assert steps, "no checkpoint appeared before the pass ended"
    assert all(p.returncode == -9 for p in started), [p.returncode for p in started]
    return max(steps)


def load(path, name) -> dict[str, np.ndarray]:
    with np.load(path / name) as npz:
        return {k: npz[k] for k in npz.files if k != "xai_jax_result"}


def assert_equal_results(got: dict, want: dict, rtol: float) -> None:
    """Integer arrays (counts) equal; floats within ``rtol`` of the largest magnitude (0: bit for bit)."""
    assert got.keys() == want.keys()
    for key in want:
        a, b = got[key], want[key]
        assert a.shape == b.shape, key
        if a.dtype.kind == "f" and rtol:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max() or 1), err_msg=key)
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, nma_argv, www_argv, predict_argv):
    """The one-process results of the commands, computed in this process."""
    from xai_jax.cli.main import main
    root = tmp_path_factory.mktemp("one")
    assert main(nma_argv(root / "nma")) == 0
    assert main(www_argv(root / "www")) == 0
    assert main(predict_argv(root / "predict.npz")) == 0
    return {"nma": load(root / "nma", "nma.npz"), "www": load(root / "www", "www.npz"),
            "predict": load(root, "predict.npz")}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, cache, nma_argv, www_argv, predict_argv):
    """Two processes: ``nma`` saving every batch, SIGKILLed once a checkpoint exists; then, in two new
    processes, that pass resumed (``resumed``), ``www contributions``, the uninterrupted ``nma`` and
    ``predict`` (per-image outputs, gathered)."""
    root = tmp_path_factory.mktemp("two")
    every = ("--checkpoint-every", "1")
    step = kill_after_checkpoint(launch([nma_argv(root / "resumed", *every)], 2, root, cache),
                                 root / ".resumed.checkpoint")
    interrupted = {"step": step, "wrote": (root / "resumed").exists()}
    outs = finish(launch([nma_argv(root / "resumed", *every, "--resume"), www_argv(root / "www"),
                          nma_argv(root / "nma"), predict_argv(root / "predict.npz")], 2, root, cache))
    return root, interrupted, outs


def test_batches_share_the_global_batches_between_processes():
    class Rows:  # a source whose images are their own dataset positions
        class_names = ("a",)

        def __len__(self):
            return 21

        def read(self, idx):
            return np.asarray(idx, np.float32)[:, None], np.zeros(len(idx), np.int32)

    order = np.random.default_rng(0).permutation(21)
    whole = list(Batches(Rows(), 8, order, prefetch=0))
    shares = [list(Batches(Rows(), 8, order, prefetch=0).share(p, 4)) for p in range(4)]
    assert [len(s) for s in shares] == [3, 3, 3, 3]  # the same number of batches everywhere, 2 rows each
    for b, batch in enumerate(whole):
        joined = {k: np.concatenate([s[b][k] for s in shares]) for k in batch}
        for key in batch:  # the processes' blocks, in process order, are the one-process batch
            np.testing.assert_array_equal(joined[key], batch[key])
    read = np.concatenate([s[b]["index"][s[b]["mask"]] for s in shares for b in range(3)])
    assert sorted(read) == list(range(21))  # every image read once: disjoint shares, together all of them
    # the last batch holds rows 16-20: process 2 reads row 20 and pads, process 3 has nothing to read
    assert [int(s[2]["mask"].sum()) for s in shares] == [2, 2, 1, 0]
    later = list(Batches(Rows(), 8, order, prefetch=0).share(3, 4).starting_at(2))
    assert len(later) == 1 and not later[0]["mask"].any() and (later[0]["index"] == -1).all()


def test_nma_www_contributions_and_predict_in_two_processes_equal_one(one_process, two_processes):
    root, _, _ = two_processes
    assert_equal_results(load(root / "nma", "nma.npz"), one_process["nma"], rtol=1e-6)
    assert_equal_results(load(root / "www", "www.npz"), one_process["www"], rtol=1e-6)
    assert int(one_process["nma"]["counts"].sum()) > 300  # the pass counted the correctly classified images
    # per-image outputs gathered from both processes: every image once, in dataset order
    assert_equal_results(load(root, "predict.npz"), one_process["predict"], rtol=1e-6)
    assert one_process["predict"]["pool"].shape == (LIMIT, 64)
    # only process 0 wrote, and only the outputs: no temporary folders, no checkpoint left
    assert sorted(p.name for p in root.iterdir()) == ["nma", "predict.npz", "resumed", "www"]


def test_kill_and_resume_in_two_processes(one_process, two_processes):
    root, interrupted, outs = two_processes
    assert 1 <= interrupted["step"] < LIMIT // BATCH and not interrupted["wrote"]
    assert all(f"resuming fold 0 after batch {interrupted['step']} of 8" in o for o in outs)
    # bit for bit the uninterrupted two-process result (the same global batches in the same order)
    assert_equal_results(load(root / "resumed", "nma.npz"), load(root / "nma", "nma.npz"), rtol=0)


def test_kill_and_resume_in_one_process(one_process, tmp_path, cache, capsys, nma_argv):
    from xai_jax.cli.main import main
    out, checkpoint = tmp_path / "nma", tmp_path / ".nma.checkpoint"
    step = kill_after_checkpoint(launch([nma_argv(out, "--checkpoint-every", "1")], 1, tmp_path, cache), checkpoint)
    assert 1 <= step < LIMIT // BATCH and not out.exists()
    # another batch size is refused, in one line, before any work; the checkpoint stays
    capsys.readouterr()
    assert main(nma_argv(out, "--checkpoint-every", "1", "--resume", "--batch-size", "128")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other inputs or options" in err[0] and "batch_size: 64 -> 128" in err[0], err
    # without --resume the interrupted pass is not silently restarted
    assert main(nma_argv(out, "--checkpoint-every", "1")) == 2
    assert "add --resume" in capsys.readouterr().err and checkpoint.is_dir() and not out.exists()
    assert main(nma_argv(out, "--checkpoint-every", "1", "--resume")) == 0  # here: one process, like the killed one
    assert "resuming fold 0 after batch" in capsys.readouterr().err
    assert_equal_results(load(out, "nma.npz"), one_process["nma"], rtol=0)  # the same batches: bit for bit
    assert not checkpoint.exists()  # removed once the pass completed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nma"]


@pytest.mark.parametrize("extra, message", [
    (["--coordinator", "127.0.0.1:1234"], "give all of --coordinator HOST:PORT, --num-processes P and --process-id I"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be in [0, 2)"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "--coordinator must be HOST:PORT"),
    (["--resume"], "--checkpoint-dir and --resume need --checkpoint-every N"),
])
def test_bad_cluster_and_checkpoint_flags_are_one_line(tmp_path, capsys, extra, message):
    from xai_jax.cli.main import main
    argv = ["nma", "--from-probs", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_engine_run_resumes_from_a_checkpoint_given_in_python(tmp_path, capsys):
    """``engine.run(checkpoint=...)``: a fold stopped after 3 of 7 batches, resumed, equals the whole fold; a
    checkpoint with another fingerprint is refused."""
    import jax.numpy as jnp

    from xai_jax import engine
    from xai_jax.checkpoints import Checkpoint
    from xai_jax.data import DigitsSource
    from xai_jax.errors import XaiJaxError

    source = DigitsSource("train")

    def step(state, batch, params):  # a bare array state: per-class pixel sums
        pixels = jnp.where(batch["mask"][:, None], batch["images"].reshape(len(batch["mask"]), -1), 0)
        return state + jnp.zeros_like(state).at[batch["labels"]].add(pixels.astype(jnp.float32))

    init = jnp.zeros((10, 64), jnp.float32)
    batches = Batches(source, 16, np.arange(100))
    whole = np.asarray(engine.run(step, init, batches, progress=False))
    first = Batches(source, 16, np.arange(48))  # the first 3 batches, saved as a stopped pass would be
    saver = Checkpoint(tmp_path / "ck", 1, {"data": "digits"}).fold(engine._replicate(init, engine._default_mesh()),
                                                                     batches)
    partial = engine.run(step, init, first, progress=False)
    saver.save(3, engine._replicate(partial, engine._default_mesh()))
    with pytest.raises(XaiJaxError, match="other inputs or options"):
        engine.run(step, init, batches, checkpoint=Checkpoint(tmp_path / "ck", 1, {"data": "mnist"}, resume=True))
    capsys.readouterr()
    resumed = engine.run(step, init, batches, progress=False,
                         checkpoint=Checkpoint(tmp_path / "ck", 1, {"data": "digits"}, resume=True))
    # restored after batch 3 and folded from batch 4: from batch 1 it would count the first 48 images twice
    assert "resuming fold 0 after batch 3 of 7" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(resumed), whole)
    assert whole.sum() > 0


def test_collect_rows_resumes_an_interrupted_pass_and_reads_only_the_rest(tmp_path, capsys):
    """``engine.collect_rows`` under a checkpoint saving every 2 batches, interrupted while reading batch 6 of 7:
    resumed, it reads only the images after the saved position and returns the uninterrupted arrays; a resume
    with another batch size is refused."""
    import jax

    from xai_jax import engine, evaluation, models
    from xai_jax.checkpoints import Checkpoint
    from xai_jax.data import ArraySource, DigitsSource
    from xai_jax.errors import XaiJaxError
    from xai_jax.rowstore import DiskRows

    class Reading(ArraySource):
        """Digits that record which images were read, and stop the pass at ``stop_at``."""
        def __init__(self, stop_at=None):
            super().__init__(*DigitsSource("train").read(np.arange(100)))
            self.stop_at, self.read_rows = stop_at, []

        def read(self, indices):
            if self.stop_at is not None and np.any(np.asarray(indices) >= self.stop_at):
                raise KeyboardInterrupt
            self.read_rows.extend(np.asarray(indices).tolist())
            return super().read(indices)

    variables = models.init_variables(models.get("small_cnn"), jax.random.key(0))
    fn = evaluation._predict_fn("small_cnn", ("conv3",), None, None)
    whole = engine.collect_rows(fn, Batches(Reading(), 16), variables, progress=False)
    with pytest.raises(KeyboardInterrupt):
        engine.collect_rows(fn, Batches(Reading(stop_at=85), 16), variables, progress=False,
                            checkpoint=Checkpoint(tmp_path / "ck", 2, {"data": "digits"}))
    files = tmp_path / "ck" / "rows-0" / "process-0"
    assert json.loads((files / "position.json").read_text())["position"] == 4  # batch 5 was not saved: every 2
    with pytest.raises(XaiJaxError, match="other batches"):
        engine.collect_rows(fn, Batches(Reading(), 32), variables, progress=False,
                            checkpoint=Checkpoint(tmp_path / "ck", 2, {"data": "digits"}, resume=True))
    capsys.readouterr()
    source = Reading()
    (tmp_path / "rows").mkdir()
    resumed = engine.collect_rows(fn, Batches(source, 16), variables, progress=False, directory=str(tmp_path / "rows"),
                                  checkpoint=Checkpoint(tmp_path / "ck", 2, {"data": "digits"}, resume=True))
    assert "resuming pass 0 after batch 4 of 7" in capsys.readouterr().err
    assert source.read_rows == list(range(64, 100))  # only the images after the 4 saved batches
    assert isinstance(resumed["conv3"], DiskRows) and sorted(resumed) == sorted(whole)
    for key in whole:
        np.testing.assert_array_equal(np.asarray(resumed[key]), whole[key], err_msg=key)
    assert np.abs(whole["conv3"]).sum() > 0


def test_predict_killed_and_resumed_equals_the_uninterrupted_run(one_process, weights, tmp_path, cache):
    """``predict --taps pool`` saving its rows every batch, SIGKILLed once a position is saved, then resumed: the
    same ``.npz`` as the uninterrupted run (the rows of the same program, bit for bit), and no checkpoint left."""
    from xai_jax.cli.main import main
    out, checkpoint = tmp_path / "predict.npz", tmp_path / ".predict.npz.checkpoint"
    argv = ["--quiet", "predict", *_inputs(weights), "--taps", "pool", "--out", str(out),
            "--checkpoint-every", "1"]
    position = checkpoint / "rows-0" / "process-0" / "position.json"
    started = launch([argv], 1, tmp_path, cache)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not position.exists() and started[0].poll() is None:
        time.sleep(0.02)
    started[0].kill()
    started[0].communicate(timeout=60)
    assert position.exists() and started[0].returncode == -9 and not out.exists()
    saved = json.loads(position.read_text())["position"]
    assert 1 <= saved < LIMIT // BATCH
    assert main(argv + ["--resume"]) == 0
    assert_equal_results(load(tmp_path, "predict.npz"), one_process["predict"], rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predict.npz"]


def test_a_process_that_fails_mid_pass_stops_the_others_with_its_error(weights, tmp_path, cache):
    """Process 1 of 2 reads a copy of the data whose image 100 (in its share of the second batch) is no JPEG: it
    fails mid-pass, and process 0, which would otherwise wait for it in the next gather for ever, exits too,
    with process 1's error; neither leaves an output or a temporary file."""
    with np.load(shared_path("cifar10", "cifar10_test_jpeg.npz")) as npz:
        arrays = {k: npz[k] for k in npz.files}
    start, end = arrays["offsets"][100:102]
    arrays["jpeg_bytes"] = arrays["jpeg_bytes"].copy()
    arrays["jpeg_bytes"][start:end] = 7
    np.savez(tmp_path / "damaged.npz", **arrays)
    port = _free_port()
    started = []
    for rank, data in enumerate([shared_path("cifar10", "cifar10_test_jpeg.npz"), tmp_path / "damaged.npz"]):
        argv = ["--quiet", "predict", "--model", "cifar_resnet20", "--weights", weights, "--data", f"jpeg-npz:{data}",
                "--limit", "256", "--batch-size", str(BATCH), "--taps", "pool", "--scratch-dir", str(tmp_path),
                "--out", str(tmp_path / "predict.npz"), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                "--process-id", str(rank)]
        started.append(subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps([argv])], cwd=tmp_path,
                                        env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errors = []
    for process in started:
        try:
            errors.append(process.communicate(timeout=240)[1])
        except subprocess.TimeoutExpired:
            for p in started:
                p.kill()
            pytest.fail("a process still waits for the one that failed")
    damaged = f"cannot decode image {tmp_path / 'damaged.npz'}[100]: cannot identify image file"
    assert [p.returncode for p in started] == [2, 2], errors
    assert f"xai-jax: error: process 1 of 2 failed: {damaged}" in errors[0], errors[0]
    assert f"xai-jax: error: {damaged}" in errors[1], errors[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.npz"]
