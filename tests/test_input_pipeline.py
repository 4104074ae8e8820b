"""The folder source as an ImageNet input pipeline: torchvision's pixels on awkward sizes, user-set decode
workers, the approximate draft mode within its measured bound, the CLI flags, and the benchmark's smoke run."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import pathlib
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from xai_jax.data import FolderSource, JpegNpzSource, open_source
from xai_jax.data import sources
from xai_jax.errors import XaiJaxError

REPO = pathlib.Path(__file__).resolve().parents[1]


def torchvision_reference(path: pathlib.Path, resize: int, crop: tuple[int, int]) -> np.ndarray:
    """torchvision's ``Compose([Resize(resize), CenterCrop(crop)])`` on a PIL image, written from its documented
    rules with Pillow calls: the shorter side becomes ``resize`` and the longer one ``int(resize * long / short)``,
    bilinear (Pillow's, antialiased); the crop's top-left corner is ``int(round((size - crop) / 2))``."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_short, new_long = resize, int(resize * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        image = image.resize(size, Image.BILINEAR)
        top = int(round((size[1] - crop[0]) / 2.0))
        left = int(round((size[0] - crop[1]) / 2.0))
        return np.asarray(image.crop((left, top, left + crop[1], top + crop[0])))


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth, photo-like RGB image (random low-frequency colour field plus a little noise)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse).astype(np.int16) + rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def awkward_tree(tmp_path_factory):
    """Class folders of JPEGs and PNGs of awkward sizes: odd, prime, portrait, exactly the resize, very wide, grey,
    RGBA and palette images (the sizes where truncation and round-half-to-even of torchvision's rules show)."""
    root = tmp_path_factory.mktemp("awkward")
    sizes = [(500, 375), (375, 500), (333, 257), (257, 1000), (256, 256), (301, 299), (1021, 383), (640, 427)]
    for i, (w, h) in enumerate(sizes):
        folder = root / f"c{i % 3}"
        folder.mkdir(exist_ok=True)
        image = photo(w, h, i)
        if i == 5:
            image = image.convert("L")
        elif i == 6:
            image = image.convert("RGBA")
        elif i == 7:
            image = image.convert("P")
        image.save(folder / (f"{i}.png" if i >= 5 else f"{i}.jpg"), **({} if i >= 5 else {"quality": 90}))
    return root


@pytest.mark.parametrize("resize, crop", [(256, (224, 224)), (227, (200, 181)), (100, (99, 100))])
def test_folder_source_gives_torchvision_pixels_on_awkward_sizes(awkward_tree, resize, crop):
    source = FolderSource(awkward_tree, resize=resize, crop=crop, decode_workers=2)
    images, _ = source.read(np.arange(len(source)))
    reference = np.stack([torchvision_reference(p, resize, crop) for p in source.paths])
    np.testing.assert_array_equal(images, reference)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
def test_folder_source_equals_torchvision_itself(awkward_tree):
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    theirs = datasets.ImageFolder(str(awkward_tree), transform=transform)
    source = FolderSource(awkward_tree, resize=256, crop=224)
    images, labels = source.all()
    assert [pathlib.Path(p) for p, _ in theirs.samples] == source.paths
    for i in range(len(theirs)):
        tensor, label = theirs[i]
        assert label == labels[i]
        np.testing.assert_array_equal(images[i], tensor.numpy().transpose(1, 2, 0))


def many_images(root: pathlib.Path, count: int) -> pathlib.Path:
    for i in range(count):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        photo(40, 30, i).save(folder / f"{i:03d}.png")
    return root


def test_decode_workers_are_honoured(tmp_path, monkeypatch):
    root = many_images(tmp_path / "tree", sources._PARALLEL_DECODE_MIN + 6)
    threads: set[str] = set()
    load = sources.load_folder_image

    def recording(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return load(*args, **kwargs)

    monkeypatch.setattr(sources, "load_folder_image", recording)
    serial, _ = FolderSource(root, decode_workers=1).all()
    assert threads == {threading.current_thread().name}  # one worker: the caller's own thread
    threads.clear()
    source = FolderSource(root, decode_workers=3)
    assert source.decode_workers == 3
    parallel, _ = source.all()
    assert threads and all(name.startswith("xai_jax-decode3") for name in threads) and len(threads) <= 3
    assert sources._DECODE_POOLS[3]._max_workers == 3
    np.testing.assert_array_equal(parallel, serial)
    default = FolderSource(root)
    assert default.decode_workers is None and sources.default_decode_workers() >= 1


def test_decoding_in_processes_gives_the_same_batch(tmp_path):
    root = many_images(tmp_path / "tree", sources._PARALLEL_DECODE_MIN + 6)
    threads = FolderSource(root, resize=32, crop=(24, 20), decode_workers=2)
    processes = FolderSource(root, resize=32, crop=(24, 20), decode_workers=2, decode_processes=True)
    expected, labels = threads.all()
    images, same_labels = processes.all()
    assert images.shape == (70, 24, 20, 3) and images.flags.writeable
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(same_labels, labels)
    corrupt = root / "c1" / "zz.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(XaiJaxError, match=f"cannot decode image {re.escape(str(corrupt))}"):
        FolderSource(root, resize=32, crop=(24, 20), decode_workers=2, decode_processes=True).all()
    with pytest.raises(XaiJaxError, match="decoding in processes needs a crop size"):
        FolderSource(root, decode_processes=True)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_decode_workers_below_one_are_one_clear_error(tmp_path, bad):
    root = many_images(tmp_path / "tree", 2)
    message = "^" + re.escape(f"decode workers must be a whole number of at least 1, got {bad!r}") + "$"
    with pytest.raises(XaiJaxError, match=message):
        FolderSource(root, decode_workers=bad)
    with pytest.raises(XaiJaxError, match=message):
        open_source(f"folder:{root}", decode_workers=bad)


def test_jpeg_npz_source_takes_decode_workers(shared_data):
    path = shared_path("cifar10", "cifar10_test_jpeg.npz")
    indices = np.arange(80)
    one, labels_one = JpegNpzSource(path, decode_workers=1).read(indices)
    two, labels_two = open_source(f"jpeg-npz:{path}", decode_workers=2).read(indices)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(labels_one, labels_two)
    with pytest.raises(XaiJaxError, match="decode workers must be a whole number of at least 1, got 0"):
        JpegNpzSource(path, decode_workers=0)


def large_jpegs(root: pathlib.Path, sizes) -> pathlib.Path:
    """Real photos (foolbox's ImageNet samples; the CIFAR-10 test JPEGs where foolbox is missing) re-encoded large
    enough for JPEG draft decoding to engage."""
    spec = importlib.util.find_spec("foolbox")
    if spec is not None:
        files = sorted((pathlib.Path(spec.submodule_search_locations[0]) / "data").glob("imagenet_*_*.jpg"))
        originals = [Image.open(f).convert("RGB") for f in files[:len(sizes)]]
    else:
        archive = np.load(shared_path("cifar10", "cifar10_test_jpeg.npz"))
        jpeg, offsets = archive["jpeg_bytes"], archive["offsets"]
        originals = [Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")
                     for i in range(len(sizes))]
    (root / "c").mkdir(parents=True)
    for i, (image, size) in enumerate(zip(originals, sizes)):
        image.resize(size, Image.BICUBIC).save(root / "c" / f"{i}.jpg", quality=90)
    return root


def test_draft_mode_is_close_to_the_exact_pixels(tmp_path):
    # Measured on foolbox's 20 ImageNet photos (experiments/draft_accuracy.py): decoded at 1/2 scale (1400x1050,
    # 2100x1575), mean |draft - exact| 0.4 and 0.9 grey levels, largest 8 and 25; below 4x the resized size
    # (500x375, 1000x750) only the crop-region resize differs, by at most 1. A broken draft (wrong box, wrong
    # scale, no resize) is off by tens on average.
    root = large_jpegs(tmp_path / "tree", [(1400, 1050), (1050, 1400), (2100, 1575), (1500, 1125), (1000, 750)])
    exact = FolderSource(root, resize=256, crop=224)
    draft = FolderSource(root, resize=256, crop=224, draft=True)
    a, _ = exact.all()
    b, _ = draft.all()
    assert a.shape == b.shape == (5, 224, 224, 3)
    diff = np.abs(a.astype(int) - b)
    assert np.all(diff[:4].reshape(4, -1).mean(1) < 2.5)
    assert np.all(diff[:4].reshape(4, -1).max(1) > 1)  # the DCT scaling did engage
    assert diff[4].max() <= 1  # 1000x750 is not decoded smaller: only the crop-region resize differs
    # draft keeps torchvision's geometry: shifting the exact image by a pixel is much further away
    assert diff[:4].mean() < 0.5 * np.abs(a[:4, :, 1:].astype(int) - a[:4, :, :-1]).mean()


def test_decode_flags_reach_the_folder_source(tmp_path):
    from xai_jax.cli.common import load_model_and_data
    from xai_jax.cli.main import build_parser

    root = many_images(tmp_path / "tree", 2)
    weights = next(shared_path("cifar10_resnet").glob("resnet20-*.th"))
    argv = ["predict", "--model", "cifar_resnet20", "--weights", str(weights), "--data", f"folder:{root}",
            "--out", str(tmp_path / "p.npz")]
    args = build_parser().parse_args(argv + ["--decode-workers", "3", "--decode-draft"])
    _, _, source = load_model_and_data(args)
    assert (source.decode_workers, source.draft, source.decode_processes) == (3, True, False)
    _, _, source = load_model_and_data(build_parser().parse_args(argv))
    assert (source.decode_workers, source.draft, source.decode_processes) == (None, False, False)
    with pytest.raises(XaiJaxError, match="decoding in processes needs a crop size"):  # CIFAR models do not crop
        load_model_and_data(build_parser().parse_args(argv + ["--decode-processes"]))


def test_input_benchmark_smoke(tmp_path):
    shared_path("cifar10", "cifar10_test_jpeg.npz")
    sys.path.insert(0, str(REPO))
    try:
        spec = importlib.util.spec_from_file_location("bench_input", REPO / "experiments" / "bench_input.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(REPO))
    out = tmp_path / "bench.json"
    result = bench.main(["--smoke", "--tree", str(tmp_path / "tree"), "--out", str(out),
                         "--pipelines", "library,library-draft,library-processes,torchvision"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {r["pipeline"]: r for r in result["rows"]}
    assert result["tree"]["count"] == 24 and len(list((tmp_path / "tree").glob("class*/*.jpg"))) == 24
    with Image.open(next((tmp_path / "tree").glob("class00/*.jpg"))) as image:
        assert image.size == (300, 200)
    assert rows["library"]["pixels_vs_reference"]["max_abs_diff"] == 0
    assert rows["library"]["pixels_vs_reference"]["exact_image_fraction"] == 1.0
    assert rows["library-draft"]["pixels_vs_reference"]["max_abs_diff"] <= 1  # 300x200: crop-region resize only
    assert rows["library-processes"]["pixels_vs_reference"]["max_abs_diff"] == 0
    for row in rows.values():
        assert row["images"] == 24 and row["cpu_s"] > 0 and row["images_per_cpu_s"] > 0
    if importlib.util.find_spec("torchvision") is None:
        assert "torchvision" in result["skipped"] and result["reference"].startswith("Pillow calls")
    # the same arguments reuse the tree; other ones refuse to touch it
    assert bench.build_tree(tmp_path / "tree", 24, 3, (300, 200), 90)["count"] == 24
    with pytest.raises(SystemExit, match="other parameters"):
        bench.build_tree(tmp_path / "tree", 25, 3, (300, 200), 90)
