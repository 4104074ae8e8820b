"""Per-image rows on disk (xai_jax.rowstore): DiskRows against NumPy, resident memory that stays flat, the
passes and trainers that read them, the streamed npz, and the commands' scratch folders."""

from __future__ import annotations

import os

import jax
import numpy as np
import optax
import pytest

from xai_jax import engine, outputs, rowstore, train
from xai_jax.errors import XaiJaxError
from xai_jax.rowstore import DiskRows


def _resident_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.parametrize("shape,dtype", [((37, 5), np.float16), ((101, 3, 7), np.float32), ((13,), np.int32),
                                         ((0, 4), np.float32), ((9, 2), np.bool_)])
def test_disk_rows_index_like_numpy(tmp_path, shape, dtype):
    rng = np.random.default_rng(len(shape))
    want = (rng.normal(size=shape) * 10).astype(dtype)
    rows = DiskRows(tmp_path / "a.npy", shape, dtype)
    assert (rows.shape, rows.dtype, len(rows), rows.nbytes) == (shape, np.dtype(dtype), shape[0], want.nbytes)
    for start in range(0, shape[0], 8):  # written in awkward blocks
        rows[start:start + 8] = want[start:start + 8]
    n = shape[0]
    keys = [slice(None), slice(3, 11), slice(None, None, 3), rng.permutation(n)[:5], rng.random(n) > 0.5]
    if n:
        keys += [np.sort(rng.integers(0, n, 6)), 0, -1, (slice(2, 7), 0) if len(shape) > 1 else slice(2, 7),
                 rng.integers(-n, n, 9), np.array([n - 1, 0, 0, 1, 2, 2, n - 1]), np.array([], np.int64),
                 slice(-4, None), slice(5, 2), [1, 0]]
    for key in keys:
        np.testing.assert_array_equal(rows[key], want[key])
    np.testing.assert_array_equal(np.asarray(rows), want)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), want)  # a standard .npy file
    rows.close()
    again = DiskRows(tmp_path / "a.npy")  # reopened read-only
    np.testing.assert_array_equal(again[:], want)
    if n:
        with pytest.raises(ValueError):
            again[0] = want[0]


@pytest.mark.parametrize("shape,dtype", [((37, 5), np.float16), ((101, 3, 7), np.float32), ((13,), np.int32),
                                         ((0, 4), np.float32)])
def test_disk_rows_read_a_stored_npz_member_and_write_it_as_npy(tmp_path, shape, dtype):
    rng = np.random.default_rng(len(shape) + 7)
    want = (rng.normal(size=shape) * 10).astype(dtype)
    other = np.arange(5.0)
    np.savez(tmp_path / "a.npz", before=other, rows=want, after=other[::-1])
    rows = DiskRows(tmp_path / "a.npz", member="rows.npy")
    assert (rows.shape, rows.dtype) == (shape, np.dtype(dtype))
    n = shape[0]
    for key in [slice(None), slice(3, 11), rng.permutation(n)[:5], np.sort(rng.integers(0, max(n, 1), 6))[:n]]:
        np.testing.assert_array_equal(rows[key], want[key])
    with open(tmp_path / "copy.npy", "wb") as f:
        rows.write_npy(f, block_bytes=64)  # many blocks
    np.testing.assert_array_equal(np.load(tmp_path / "copy.npy"), want)
    with pytest.raises(XaiJaxError, match="read-only"):
        DiskRows(tmp_path / "a.npz", member="rows.npy", writable=True)


def test_disk_rows_refuse_members_they_cannot_read_by_rows(tmp_path):
    x = np.ones((64, 8), np.float32)
    np.savez_compressed(tmp_path / "c.npz", rows=x)
    with pytest.raises(XaiJaxError, match="compressed"):
        DiskRows(tmp_path / "c.npz", member="rows.npy")
    np.savez(tmp_path / "a.npz", rows=x)
    with pytest.raises(XaiJaxError, match="no readable member other.npy"):
        DiskRows(tmp_path / "a.npz", member="other.npy")
    np.save(tmp_path / "t.npy", x)
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:-100])
    with pytest.raises(XaiJaxError, match="shorter than its header says"):
        DiskRows(tmp_path / "t.npy")
    np.save(tmp_path / "o.npy", np.array([{}, 1], dtype=object))
    with pytest.raises(XaiJaxError, match="Python objects"):
        DiskRows(tmp_path / "o.npy")


def test_disk_rows_keep_resident_memory_flat(tmp_path):
    """192 MiB written and read back by batches, in order and by random gathers: the process's resident memory
    grows by a few batches, not by the array (a memory map without the page release holds all of it)."""
    n, d = 6144, 16384  # float16 rows of 32 KiB, like a CIFAR ResNet's layer1
    rows = DiskRows(tmp_path / "big.npy", (n, d), np.float16)
    block = np.ones((256, d), np.float16)
    before = _resident_mib()
    for start in range(0, n, 256):
        rows[start:start + 256] = block * (start // 256)
    rng = np.random.default_rng(0)
    total = 0.0
    for _ in range(24):
        total += float(rows[np.sort(rng.choice(n, 256, replace=False))][:, 0].astype(np.float32).sum())
    for start in range(0, n, 512):
        total += float(rows[start:start + 512][:, -1].astype(np.float32).sum())
    grown = _resident_mib() - before
    assert grown < 48, f"resident memory grew by {grown:.0f} MiB for a 192 MiB array"
    assert rows[5000, 7] == 5000 // 256 and total > 0


def test_gathers_from_a_fresh_file_map_none_of_its_pages(tmp_path):
    """Random gathers right after the pass wrote the file: its page cache holds it in large folios, which a read
    through the memory map maps whole (kernel 6.18: 155 MiB of this 192 MiB file resident at once, to gather 256
    rows of 32 KiB). Rows are read with ``preadv`` instead: 0 MiB of the file's pages mapped, sampled every
    millisecond while the gathers run."""
    import threading
    import time
    n, d = 6144, 16384
    rows = DiskRows(tmp_path / "fresh.npy", (n, d), np.float16)
    for start in range(0, n, 256):
        rows[start:start + 256] = np.full((256, d), start // 256, np.float16)

    def file_resident_mib() -> float:
        with open("/proc/self/smaps") as f:
            lines, total, inside = f.read().splitlines(), 0, False
        for line in lines:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                inside = head[-1] == str(tmp_path / "fresh.npy")
            elif inside and head[0] == "Rss:":
                total += int(head[1])
        return total / 1024

    peak, done = [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], file_resident_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    rng = np.random.default_rng(0)
    try:
        for _ in range(20):
            index = np.sort(rng.integers(0, n, 256))
            np.testing.assert_array_equal(rows[index][:, 0], (index // 256).astype(np.float16))
    finally:
        done.set()
        sampler.join()
    assert peak[0] < 8, f"{peak[0]:.0f} MiB of the file's pages mapped during the gathers"


def _chunks(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [{"taps": {"a": rng.normal(size=(s, 3, 2)).astype(np.float16)}, "labels": rng.integers(0, 9, s)}
            for s in sizes]


@pytest.mark.parametrize("on_disk", [False, True])
def test_store_equals_concatenation(tmp_path, on_disk):
    chunks = _chunks([7, 7, 3])
    out = rowstore.store(iter(chunks), 17, tmp_path if on_disk else None)
    want = jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)
    assert isinstance(out["taps"]["a"], DiskRows) == on_disk
    jax.tree.map(lambda got, ref: np.testing.assert_array_equal(np.asarray(got), ref), out, want)
    if on_disk:
        assert sorted(os.listdir(tmp_path)) == ["labels.npy", "taps.a.npy"]


def test_store_refuses_the_wrong_number_of_rows():
    with pytest.raises(XaiJaxError, match="yielded 17 rows, not the 18"):
        rowstore.store(iter(_chunks([7, 7, 3])), 18)
    with pytest.raises(XaiJaxError, match="more than the 16 rows"):
        rowstore.store(iter(_chunks([7, 7, 3])), 16)
    with pytest.raises(XaiJaxError, match="empty"):
        rowstore.store(iter([]), 0)


def _scaled_sum(rows, scale):
    return {"y": rows["x"].astype(np.float32).sum(-1) * scale}


def test_map_arrays_reads_disk_rows_by_chunks(tmp_path):
    x = np.random.default_rng(1).normal(size=(203, 9)).astype(np.float16)
    rows = DiskRows(tmp_path / "x.npy", x.shape, x.dtype)
    rows[:] = x
    got = engine.map_arrays(_scaled_sum, {"x": rows}, 2.0, chunk=64)["y"]
    np.testing.assert_allclose(got, x.astype(np.float32).sum(-1) * 2.0, rtol=1e-6)


def _regression_loss(params, model_state, batch, key):
    pred = batch["x"].astype(np.float32) @ params["w"]
    loss = ((pred - batch["y"]) ** 2).mean()
    return loss, (model_state, {"loss": loss})


def test_fit_from_disk_rows_equals_fit_from_memory(tmp_path):
    """On a CPU backend rows on disk are gathered per step on the host: the same steps as host arrays."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(150, 6)).astype(np.float16)
    y = (x.astype(np.float32) @ rng.normal(size=(6,))).astype(np.float32)
    disk = DiskRows(tmp_path / "x.npy", x.shape, x.dtype)
    disk[:] = x
    assert not train.fits_on_device({"x": disk, "y": y}, 1 << 30) and train.fits_on_device({"x": x, "y": y}, 1 << 30)
    optimizer = optax.adam(0.05)

    def run(data, device_bytes):
        state = train.init_state({"w": np.zeros(6, np.float32)}, optimizer)
        state, history = train.fit(_regression_loss, optimizer, state, data, batch_size=32, epochs=3,
                                   key=jax.random.key(0), device_bytes=device_bytes, progress=False)
        return np.asarray(state.params["w"]), history.train[-1]["loss"]

    w_disk, loss_disk = run({"x": disk, "y": y}, 1 << 30)
    w_host, loss_host = run({"x": x, "y": y}, 0)
    np.testing.assert_array_equal(w_disk, w_host)
    assert loss_disk == loss_host
    np.testing.assert_array_equal(np.asarray(train.to_device(disk, block_bytes=100)), x)  # 8 rows a block


def test_dec_refinement_from_disk_rows_matches_memory(tmp_path):
    """The host-fed refinement (minibatches gathered a few steps at a time) follows the device-resident one."""
    from xai_jax.kernels.clustering import kmeans
    from xai_jax.methods.dec import DECConfig, embed_rows
    from xai_jax.methods.dec.autoencoder import encoder, normalisation
    from xai_jax.methods.dec.refine import _steps_per_call, dec_refine
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(size=(300, 24)) + rng.integers(0, 3, (300, 1)) * 2.0, 0).astype(np.float16)
    disk = DiskRows(tmp_path / "x.npy", x.shape, x.dtype)
    disk[:] = x
    config = DECConfig(taps=("fc",), clusters=3, hidden=(16, 16), embedding_size=4, batch_size=32,
                       update_interval=12, max_dec_steps=24, tolerance=0.0)
    layer = {"encoder": encoder((16, 16), 4).init(jax.random.key(0), np.zeros((1, 24)))["params"],
             "norm": normalisation(x)}
    z = embed_rows((16, 16), 4, 8.0, layer, x)
    mu, _, _ = kmeans(np.asarray(z), 3, jax.random.key(1), n_init=2)
    assert _steps_per_call(12, 32 * 24 * 2, budget=32 * 24 * 2 * 5) == 4  # the largest divisor of 12 within 5
    memory = dec_refine(config, layer, x, z, mu, jax.random.key(2))
    on_disk = dec_refine(config, layer, disk, z, mu, jax.random.key(2))
    assert memory[3]["dec_steps"] == on_disk[3]["dec_steps"] == 24
    np.testing.assert_allclose(on_disk[1], memory[1], atol=2e-4)  # embeddings on the radius-8 sphere
    np.testing.assert_allclose(on_disk[2], memory[2], atol=2e-4)
    np.testing.assert_allclose(on_disk[3]["dec_kl"], memory[3]["dec_kl"], rtol=1e-4)


def test_npz_streams_disk_rows(tmp_path):
    x = np.random.default_rng(4).normal(size=(33, 4, 5)).astype(np.float32)
    disk = DiskRows(tmp_path / "x.npy", x.shape, x.dtype)
    disk[:] = x
    outputs.save_npz(tmp_path / "out.npz", {"taps": disk, "names": np.asarray(["a", "b"])}, "predict")
    with np.load(tmp_path / "out.npz") as f:
        np.testing.assert_array_equal(f["taps"], x)
        assert f["names"].tolist() == ["a", "b"] and "xai_jax_result" in f.files
    assert outputs.existing_kind(tmp_path / "out.npz") == "predict"


def test_scratch_folder_is_checked_first_and_removed_after(tmp_path):
    mine = tmp_path / "scratch"
    mine.mkdir()
    (mine / "keep.txt").write_text("the user's")
    with outputs.scratch_dir(tmp_path / "out", mine, needed=1000) as folder:
        assert os.path.dirname(folder) == str(mine)
        DiskRows(os.path.join(folder, "a.npy"), (10, 3), np.float32)
    assert sorted(os.listdir(mine)) == ["keep.txt"]  # only what it made is gone
    with pytest.raises(XaiJaxError, match=r"need .* GiB on disk .* give --scratch-dir"):
        with outputs.scratch_dir(tmp_path / "out", None, needed=1 << 62):
            pass
    with pytest.raises(XaiJaxError, match="--scratch-dir .* is not a folder"):
        with outputs.scratch_dir(tmp_path / "out", tmp_path / "absent"):
            pass


def test_predict_through_a_scratch_folder_writes_what_memory_does(tmp_path, capsys):
    """``--scratch-dir`` sends the taps through DiskRows files into the npz: the same arrays as in memory,
    and the scratch folder ends as it began."""
    from xai_jax import cli
    from conftest import shared_path
    data = f"jpeg-npz:{shared_path('cifar10', 'cifar10_test_jpeg.npz')}"
    weights = str(next(shared_path("cifar10_resnet").glob("resnet20-*.th")))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    common = ["--quiet", "predict", "--model", "cifar_resnet20", "--weights", weights, "--data", data,
              "--limit", "70", "--batch-size", "32", "--taps", "layer1,pool"]
    assert cli.main(common + ["--out", str(tmp_path / "memory.npz")]) == 0
    assert cli.main(common + ["--out", str(tmp_path / "disk.npz"), "--scratch-dir", str(scratch)]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "memory.npz") as memory, np.load(tmp_path / "disk.npz") as disk:
        assert sorted(memory.files) == sorted(disk.files)
        for name in ("logits", "labels", "layer1", "pool", "class_names"):
            np.testing.assert_array_equal(disk[name], memory[name])
        assert disk["layer1"].shape == (70, 32, 32, 16)
    assert os.listdir(scratch) == [] and sorted(os.listdir(tmp_path)) == ["disk.npz", "memory.npz", "scratch"]
