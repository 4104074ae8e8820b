"""Data sources, the spec parser and the batcher, checked against facts about the real datasets."""

from __future__ import annotations

import gc
import gzip
import importlib.util
import pathlib
import re
import shutil
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import require_module, shared_path
from xai_jax.data import (DIGIT_NAMES, FASHION_MNIST_NAMES, ArraySource, Batches, DigitsSource, FolderSource,
                          IdxSource, JpegNpzSource, NpzSource, Source, Subset, TfdsSource, open_source, subset)
from xai_jax.data.sources import center_crop_box, resized_size
from xai_jax.data.spec import parse_tfds, split_if_any
from xai_jax.errors import XaiJaxError

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def foolbox_sample(prefix: str) -> list[pathlib.Path]:
    """foolbox's bundled samples ``<prefix>_<index>_<label>.<ext>``: the first test images of each dataset."""
    spec = importlib.util.find_spec("foolbox")  # found without importing it (slow) for a few PNGs
    if spec is None:
        require_module("foolbox")  # skips, or fails in CI
    folder = pathlib.Path(spec.submodule_search_locations[0]) / "data"
    return sorted(folder.glob(f"{prefix}_*"))


def q(path: pathlib.Path) -> str:
    """A path as a literal inside a ``pytest.raises(match=...)`` pattern."""
    return re.escape(str(path))


def sample_label(path: pathlib.Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


# ---------------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


@pytest.fixture(scope="module")
def mnist_test():
    return IdxSource(shared_path("mnist"), split="test")


def test_mnist_test_set_facts(mnist_test):
    images, labels = mnist_test.all()
    assert len(mnist_test) == 10_000
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels[0] == 7
    counts = np.bincount(labels, minlength=10)
    assert counts[0] == 980 and counts[1] == 1135 and counts.sum() == 10_000
    assert mnist_test.class_names == DIGIT_NAMES


def test_mnist_and_fashion_pixels_match_foolbox_samples(mnist_test):
    # foolbox ships the first 20 test images of both datasets as PNG: an independent copy of the pixels.
    fashion = IdxSource(shared_path("fashion_mnist"), split="test")
    for prefix, source in (("mnist", mnist_test), ("fashionMNIST", fashion)):
        samples = foolbox_sample(prefix)
        assert len(samples) == 20
        images, labels = source.read(np.arange(20))
        for i, path in enumerate(samples):
            assert labels[i] == sample_label(path)
            np.testing.assert_array_equal(images[i, ..., 0], np.asarray(Image.open(path)))


def test_fashion_mnist_splits_and_names_from_spec():
    folder = shared_path("fashion_mnist")
    test = open_source(f"idx:{folder}")
    train = open_source(f"idx:{folder}", split="train")
    assert test.class_names == FASHION_MNIST_NAMES and test.class_names[9] == "Ankle boot"
    assert len(test) == 10_000 and len(train) == 60_000
    assert np.all(np.bincount(test.labels) == 1_000) and np.all(np.bincount(train.labels) == 6_000)
    images, labels = train.read(np.array([59_999, 0]))
    assert images.shape == (2, 28, 28, 1) and labels.tolist() == train.labels[[59_999, 0]].tolist()


def write_idx(path: pathlib.Path, array: np.ndarray, compress: bool) -> pathlib.Path:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture
def small_idx(tmp_path, mnist_test):
    images, labels = mnist_test.read(np.arange(50))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[..., 0], compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress=False)
    return tmp_path, images, labels


def test_idx_uncompressed_and_file_pair(small_idx):
    folder, images, labels = small_idx
    source = IdxSource(folder)
    np.testing.assert_array_equal(source.read(np.arange(50))[0], images)
    np.testing.assert_array_equal(source.labels, labels)
    pair = IdxSource((folder / "t10k-images-idx3-ubyte", folder / "t10k-labels-idx1-ubyte"),
                     class_names=list("abcdefghij"))
    assert pair.class_names[7] == "h"
    np.testing.assert_array_equal(pair.read([3, -1])[0], images[[3, 49]])


def test_idx_errors_name_the_file(small_idx):
    folder, images, labels = small_idx
    image_file = folder / "t10k-images-idx3-ubyte"
    with pytest.raises(XaiJaxError, match="no train-images-idx3-ubyte"):
        IdxSource(folder, split="train")
    with pytest.raises(XaiJaxError, match="split must be"):
        IdxSource(folder, split="validation")
    with pytest.raises(XaiJaxError, match="does not exist"):
        IdxSource(folder / "missing")

    image_file.write_bytes(b"\0\0\x08\x01" + image_file.read_bytes()[4:])  # labels' magic on images
    with pytest.raises(XaiJaxError, match=f"{q(image_file)}.*magic number 00000801"):
        IdxSource(folder)

    write_idx(image_file, images[:, :, :, 0], compress=False)
    image_file.write_bytes(image_file.read_bytes()[:-5])  # truncated: detected when the pixels load
    with pytest.raises(XaiJaxError, match=f"{q(image_file)} holds"):
        IdxSource(folder).read([0])

    write_idx(image_file, images[:49, :, :, 0], compress=False)
    with pytest.raises(XaiJaxError, match="49 images but .* 50 labels"):
        IdxSource(folder)

    image_file.unlink()
    gz_file = write_idx(folder / "t10k-images-idx3-ubyte.gz", images[..., 0], compress=True)
    gz_file.write_bytes(gz_file.read_bytes()[:-40])
    with pytest.raises(XaiJaxError, match=f"cannot read IDX file {q(gz_file)}"):
        IdxSource(folder).read([0])


# ---------------------------------------------------------------------------------------------------------
# JPEG bytes in an npz (CIFAR-10)


@pytest.fixture(scope="module")
def cifar_test():
    return JpegNpzSource(shared_path("cifar10", "cifar10_test_jpeg.npz"))


def test_cifar10_jpeg_npz_facts(cifar_test):
    assert len(cifar_test) == 10_000
    assert cifar_test.class_names == CIFAR10_NAMES
    assert np.all(np.bincount(cifar_test.labels, minlength=10) == 1_000)
    images, labels = cifar_test.read(np.array([0, 9_999, 4_321]))
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == cifar_test.labels[[0, 9_999, 4_321]].tolist()
    assert images.std() > 20  # real pictures, not a constant


def test_cifar10_decodes_to_the_original_rgb_pixels(cifar_test):
    # foolbox's cifar10_00_3.png is the original (lossless) first test image, a cat. Its JPEG re-encoding
    # is the first cat of the npz; decoded as RGB in the right orientation it lies within JPEG noise.
    original = np.asarray(Image.open(foolbox_sample("cifar10_00")[0]).convert("RGB")).astype(float)
    (cat,), (label,) = cifar_test.read([3_000])
    assert label == 3
    assert np.abs(cat - original).mean() < 12
    assert np.abs(cat[..., ::-1] - original).mean() > 25  # BGR would not match
    assert np.abs(cat[::-1] - original).mean() > 25  # nor would an upside-down image


def test_jpeg_npz_errors(tmp_path):
    jpeg = tmp_path / "one.jpg"
    Image.new("RGB", (4, 4), (200, 10, 10)).save(jpeg)
    data = np.frombuffer(jpeg.read_bytes(), np.uint8)
    good = tmp_path / "good.npz"
    np.savez(good, jpeg_bytes=np.concatenate([data, data]), offsets=np.array([0, len(data), 2 * len(data)]),
             labels=np.array([1, 0], np.uint8), class_names=np.array(["a", "b"]))
    images, labels = JpegNpzSource(good).read([1, 0])
    assert images.shape == (2, 4, 4, 3) and labels.tolist() == [0, 1]
    assert np.abs(images[0].astype(int) - (200, 10, 10)).max() < 8

    missing = tmp_path / "missing_key.npz"
    np.savez(missing, jpeg_bytes=data, labels=np.array([0]))
    with pytest.raises(XaiJaxError, match=f"{q(missing)} must hold `offsets`; it holds jpeg_bytes, labels"):
        JpegNpzSource(missing)
    bad_offsets = tmp_path / "bad_offsets.npz"
    np.savez(bad_offsets, jpeg_bytes=data, offsets=np.array([0, len(data) + 3]), labels=np.array([0]))
    with pytest.raises(XaiJaxError, match="offsets must rise"):
        JpegNpzSource(bad_offsets)
    corrupt = tmp_path / "corrupt_image.npz"
    np.savez(corrupt, jpeg_bytes=np.concatenate([data, data[:20]]),
             offsets=np.array([0, len(data), len(data) + 20]),
             labels=np.array([0, 0]))
    with pytest.raises(XaiJaxError, match=rf"cannot decode image {q(corrupt)}\[1\]"):
        JpegNpzSource(corrupt).read([0, 1])
    not_npz = tmp_path / "not.npz"
    not_npz.write_bytes(b"hello")
    with pytest.raises(XaiJaxError, match=f"npz file {q(not_npz)} is not an .npz file"):
        JpegNpzSource(not_npz)


# ---------------------------------------------------------------------------------------------------------
# Image folders


def save(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def image_tree(tmp_path):
    """root/{cat,dog}/ with 6x4 images (PNG exact, one JPEG, one grey, one RGBA) and files to skip."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    pixels = {
        "cat/a.png": rng.integers(0, 256, (4, 6, 3), dtype=np.uint8),
        "cat/sub/b.PNG": rng.integers(0, 256, (4, 6, 3), dtype=np.uint8),
        "dog/c.png": rng.integers(0, 256, (4, 6), dtype=np.uint8),  # grey
        "dog/d.png": rng.integers(0, 256, (4, 6, 4), dtype=np.uint8),  # RGBA
        "dog/e.jpg": np.full((4, 6, 3), (30, 140, 220), np.uint8),
    }
    for name, array in pixels.items():
        save(root / name, array)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"junk")
    (root / "readme.md").write_text("a file beside the class folders")
    (root / ".cache").mkdir()
    return root, pixels


def test_folder_source_labels_and_pixels(image_tree):
    root, pixels = image_tree
    source = FolderSource(root)
    assert source.class_names == ("cat", "dog") and len(source) == 5
    assert [p.relative_to(root).as_posix() for p in source.paths] == list(pixels)
    images, labels = source.all()
    assert images.shape == (5, 4, 6, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(images[0], pixels["cat/a.png"])
    np.testing.assert_array_equal(images[1], pixels["cat/sub/b.PNG"])
    np.testing.assert_array_equal(images[2], np.repeat(pixels["dog/c.png"][..., None], 3, -1))
    np.testing.assert_array_equal(images[3], pixels["dog/d.png"][..., :3])
    assert np.abs(images[4].astype(int) - (30, 140, 220)).max() <= 6  # lossy JPEG
    renamed = FolderSource(root, class_names=["Cat", "Dog"])
    assert renamed.class_names == ("Cat", "Dog")


def test_folder_source_errors(image_tree, tmp_path):
    root, _ = image_tree
    odd = save(root / "dog" / "f.png", np.zeros((5, 6, 3), np.uint8))
    with pytest.raises(XaiJaxError, match=f"image {q(odd)} is 6x5 but .* is 6x4; all images must share one size"):
        FolderSource(root).all()
    odd.unlink()
    corrupt = root / "cat" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    source = FolderSource(root)
    source.read([2])  # a good image still reads
    with pytest.raises(XaiJaxError, match=f"cannot decode image {q(corrupt)}"):
        source.all()
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    (empty / "cls" / "labels.csv").write_text("x")
    with pytest.raises(XaiJaxError, match=f"no images .* under {q(empty)}"):
        FolderSource(empty)
    with pytest.raises(XaiJaxError, match="does not exist"):
        FolderSource(tmp_path / "nowhere")
    (root / "owl").mkdir()  # an empty class folder still takes a label
    assert FolderSource(root).class_names == ("cat", "dog", "owl")
    with pytest.raises(XaiJaxError, match="2 class names given for 3 classes"):
        FolderSource(root, class_names=["a", "b"])


def test_torchvision_resize_and_centre_crop_geometry():
    # torchvision.transforms.Resize(256) / CenterCrop(224) on a 500x375 (w x h) ImageNet photo
    assert resized_size(500, 375, 256) == (341, 256)
    assert resized_size(375, 500, 256) == (256, 341)
    assert resized_size(256, 256, 256) == (256, 256)
    assert center_crop_box(341, 256, (224, 224)) == (58, 16, 282, 240)  # round(58.5) -> 58, as torchvision
    assert center_crop_box(256, 341, (224, 224)) == (16, 58, 240, 282)


def test_folder_resize_then_crop(tmp_path):
    # 40x20: red left half, blue right half -> shorter side 10 gives 20x10 -> centre 10x10 crop keeps
    # columns 5..14 of the resized image, so the red/blue edge sits between crop columns 4 and 5.
    halves = np.zeros((20, 40, 3), np.uint8)
    halves[:, :20] = (255, 0, 0)
    halves[:, 20:] = (0, 0, 255)
    save(tmp_path / "root" / "a" / "wide.png", halves)
    save(tmp_path / "root" / "b" / "tall.png", np.full((60, 30, 3), 77, np.uint8))
    source = FolderSource(tmp_path / "root", resize=10, crop=(10, 10))
    images, labels = source.all()
    assert images.shape == (2, 10, 10, 3) and labels.tolist() == [0, 1]
    np.testing.assert_array_equal(images[0, :, :4], np.broadcast_to((255, 0, 0), (10, 4, 3)))
    np.testing.assert_array_equal(images[0, :, 6:], np.broadcast_to((0, 0, 255), (10, 4, 3)))
    # bilinear (with Pillow's antialiasing, as torchvision) blends the two columns at the edge; nearest would not
    np.testing.assert_array_equal(images[0, 0, 4:6], [[223, 0, 32], [32, 0, 223]])
    assert np.all(images[1] == 77)
    with pytest.raises(XaiJaxError, match="smaller than the 12x12 crop"):
        FolderSource(tmp_path / "root", resize=10, crop=12).all()
    with pytest.raises(XaiJaxError, match="give a crop size"):
        FolderSource(tmp_path / "root", resize=10).all()  # aspect ratios differ


def test_folder_of_imagenet_wnids_gets_standard_indices(tmp_path):
    # foolbox's ImageNet samples carry their standard class index; file them under their wnids.
    synsets_file = shared_path("imagenet", "imagenet_synsets.txt")
    wnids = synsets_file.read_text().split()
    samples = foolbox_sample("imagenet")[:4]
    for path in samples:
        (tmp_path / wnids[sample_label(path)]).mkdir(exist_ok=True)
        shutil.copy(path, tmp_path / wnids[sample_label(path)] / path.name)
    source = open_source(f"folder:{tmp_path}", resize=256, crop=(224, 224), synsets=str(synsets_file))
    assert len(source.class_names) == 1000 and source.class_names[0] == "n01440764"
    images, labels = source.all()
    assert images.shape == (4, 224, 224, 3)
    assert sorted(labels.tolist()) == sorted(sample_label(p) for p in samples)
    (tmp_path / "n99999999").mkdir()
    with pytest.raises(XaiJaxError, match="n99999999 is not a WordNet id listed in"):
        FolderSource(tmp_path, synsets=synsets_file)


# ---------------------------------------------------------------------------------------------------------
# Plain npz arrays


def test_npz_source(tmp_path):
    rng = np.random.default_rng(1)
    grey = tmp_path / "grey.npz"
    np.savez(grey, images=rng.integers(0, 256, (5, 7, 9), dtype=np.uint8), labels=np.array([0, 2, 1, 2, 0]))
    source = NpzSource(grey)
    assert source.class_names == ("0", "1", "2") and len(source) == 5
    images, labels = source.read([4, 1])
    assert images.shape == (2, 7, 9, 1) and labels.dtype == np.int32 and labels.tolist() == [0, 2]

    floats = tmp_path / "floats.npz"
    np.savez(floats, images=rng.random((3, 4, 4, 3), np.float32), labels=np.array([1, 1, 0]),
             class_names=np.array(["no", "yes"]))
    assert NpzSource(floats).class_names == ("no", "yes")

    def bad(name, match, **arrays):
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(XaiJaxError, match=match):
            NpzSource(path)

    images = np.zeros((3, 4, 4, 3), np.uint8)
    bad("nolabels", "nolabels.npz must hold `labels`; it holds images", images=images)
    bad("range", r"labels must lie in \[0, 2\), got \[0, 2\]", images=images, labels=np.array([0, 1, 2]),
        class_names=np.array(["a", "b"]))
    bad("negative", r"labels must lie in \[0, 2\), got \[-1, 1\]", images=images, labels=np.array([0, 1, -1]))
    bad("floatlabels", "labels must be integers", images=images, labels=np.array([0.0, 1.0, 1.0]))
    bad("count", "expected 3 labels", images=images, labels=np.array([0, 1]))
    bad("shape", r"images must be \[N, H, W\] or \[N, H, W, C\]", images=np.zeros((3, 4)), labels=np.zeros(3, int))
    bad("bright", r"float images must lie in \[0, 1\], got \[0.5, 255.0\]", images=np.array([[[0.5]], [[255.0]]]),
        labels=np.zeros(2, int))
    bad("nan", "float images must lie in", images=np.full((3, 2, 2), np.nan), labels=np.zeros(3, int))
    bad("int16", "images must be uint8 or float", images=np.zeros((3, 2, 2), np.int16), labels=np.zeros(3, int))


# ---------------------------------------------------------------------------------------------------------
# scikit-learn digits


def test_digits_source_and_split():
    from sklearn.datasets import load_digits

    digits = load_digits()
    everything = DigitsSource()
    assert len(everything) == 1797 and everything.class_names == DIGIT_NAMES
    images, labels = everything.all()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8 and images.max() == 255
    np.testing.assert_array_equal(images[..., 0], np.round(digits.images * 255 / 16))
    np.testing.assert_array_equal(labels, digits.target)

    train, test = DigitsSource("train"), DigitsSource("test")
    assert (len(train), len(test)) == (1437, 360)
    assert not set(train.source_indices) & set(test.source_indices)
    assert set(train.source_indices) | set(test.source_indices) == set(range(1797))
    per_class = np.bincount(digits.target)
    assert np.all(np.abs(np.bincount(test.labels) - 0.2 * per_class) <= 1)  # stratified
    np.testing.assert_array_equal(DigitsSource("test").source_indices, test.source_indices)  # reproducible
    np.testing.assert_array_equal(test.all()[0], images[test.source_indices])
    with pytest.raises(XaiJaxError, match="digits split"):
        DigitsSource("val")


# ---------------------------------------------------------------------------------------------------------
# TFDS data sources (no TensorFlow)


@pytest.fixture(scope="module")
def tfds():
    return require_module("tensorflow_datasets")


def test_tfds_source_over_mocked_data_source(tfds):
    # USE_CODE mocks array-record data sources from the builder's code alone; AUTO would first look for
    # metadata files. Neither path imports TensorFlow.
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        source = TfdsSource("mnist", split="test")
        reference = tfds.data_source("mnist", split="test", download=False)
        assert len(source) == 20 and source.class_names == DIGIT_NAMES
        images, labels = source.read(np.array([3, 0, 19]))
        assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8 and labels.dtype == np.int32
        for row, i in enumerate([3, 0, 19]):
            np.testing.assert_array_equal(images[row], reference[i]["image"])
            assert labels[row] == reference[i]["label"]
        from_spec = open_source("tfds:mnist:train", limit=5)
        assert len(from_spec) == 5 and from_spec.description == "tfds:mnist:train"
        assert open_source("tfds:mnist").description == "tfds:mnist:test"
        with pytest.raises(XaiJaxError, match="has no feature 'picture'; it has image, label"):
            TfdsSource("mnist", image_key="picture")
    assert "tensorflow" not in __import__("sys").modules


def test_tfds_errors_are_one_line(tfds, tmp_path):
    with pytest.raises(XaiJaxError, match="cannot open TFDS dataset 'no_such_dataset_xyz'.*not found") as info:
        TfdsSource("no_such_dataset_xyz", data_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_parse_tfds_names_versions_and_splits():
    assert parse_tfds("mnist") == ("mnist", None)
    assert parse_tfds("mnist:train") == ("mnist", "train")
    assert parse_tfds("mnist:test[:10%]") == ("mnist", "test[:10%]")
    assert parse_tfds("cifar10:3.0.2:train[:50%]") == ("cifar10:3.0.2", "train[:50%]")
    assert parse_tfds("imagenet2012/subset:5.1.0") == ("imagenet2012/subset:5.1.0", None)


def test_split_if_any_passes_a_default_split_only_where_the_spec_leaves_one_open(tmp_path):
    assert split_if_any("idx:data/mnist", "train") == "train"
    assert split_if_any("digits", "test") == "test"
    assert split_if_any("tfds:mnist", "train") == "train"
    assert split_if_any("tfds:cifar10:3.0.2", "train") == "train"
    assert split_if_any("tfds:mnist:test[:10%]", "train") is None
    for spec in ("jpeg-npz:a.npz", "npz:a.npz", "folder:imgs"):
        assert split_if_any(spec, "train") is None
    npz = tmp_path / "a.npz"
    np.savez(npz, images=np.zeros((4, 2, 2), np.uint8), labels=np.arange(4))
    assert len(open_source(f"npz:{npz}", split=split_if_any(f"npz:{npz}", "train"))) == 4


# ---------------------------------------------------------------------------------------------------------
# The spec parser


@pytest.mark.parametrize("spec", ["", "bogus:x", "idx", "idx:", "npz", "digits:train", "tfds:", "mnist"])
def test_malformed_specs_list_the_valid_forms(spec):
    with pytest.raises(XaiJaxError, match="valid forms: idx:DIR, jpeg-npz:FILE, folder:DIR, npz:FILE, "
                                          r"tfds:NAME\[:SPLIT\], digits"):
        open_source(spec)


def test_missing_paths_list_the_valid_forms(tmp_path):
    for spec in (f"idx:{tmp_path}/none", f"npz:{tmp_path}/none.npz", f"jpeg-npz:{tmp_path}",
                 f"folder:{tmp_path}/none"):
        with pytest.raises(XaiJaxError, match="no such (file|folder); valid forms"):
            open_source(spec)


def test_spec_kinds_splits_and_limit(tmp_path, image_tree):
    digits = open_source("digits", limit=10)
    assert isinstance(digits, Subset) and len(digits) == 10
    np.testing.assert_array_equal(digits.all()[1], np.arange(10))
    assert len(open_source("digits", split="test")) == 360
    assert len(open_source("digits", limit=10_000)) == 1797
    with pytest.raises(XaiJaxError, match="limit must be at least 1"):
        open_source("digits", limit=0)
    npz = tmp_path / "a.npz"
    np.savez(npz, images=np.zeros((4, 2, 2), np.uint8), labels=np.arange(4))
    assert len(open_source(f"npz:{npz}", limit=3)) == 3
    with pytest.raises(XaiJaxError, match="a split does not apply to npz"):
        open_source(f"npz:{npz}", split="test")
    root, _ = image_tree
    folder = open_source(f"folder:{root}", resize=3, crop=2)
    assert folder.read([0])[0].shape == (1, 2, 2, 3)


def test_subset_takes_the_first_items_or_a_seeded_draw_in_source_order():
    labels = np.repeat(np.arange(7), 15)[:103]  # sorted by class, like the CIFAR-10 archives
    source = ArraySource(np.arange(103, dtype=np.uint8).reshape(103, 1, 1), labels)
    first = subset(source, 20)
    np.testing.assert_array_equal(first.indices, np.arange(20))
    assert set(first.all()[1]) == {0, 1}
    drawn = subset(source, 20, seed=3)
    expected = np.sort(np.random.default_rng(3).permutation(103)[:20])
    np.testing.assert_array_equal(drawn.indices, expected)
    np.testing.assert_array_equal(drawn.all()[0].ravel(), expected)
    assert len(set(drawn.all()[1])) >= 5
    np.testing.assert_array_equal(subset(source, 20, seed=3).indices, drawn.indices)
    assert not np.array_equal(subset(source, 20, seed=4).indices, drawn.indices)
    np.testing.assert_array_equal(subset(source, 500, seed=1).indices, np.arange(103))
    with pytest.raises(XaiJaxError, match="limit must be at least 1, got 0"):
        subset(source, 0, seed=1)


def test_spec_opens_the_real_datasets():
    mnist = open_source(f"idx:{shared_path('mnist')}", limit=100)
    assert len(mnist) == 100 and mnist.class_names == DIGIT_NAMES and mnist.read([0])[1][0] == 7
    cifar = open_source(f"jpeg-npz:{shared_path('cifar10', 'cifar10_test_jpeg.npz')}", resize=224, crop=(224, 224))
    assert cifar.class_names == CIFAR10_NAMES
    assert cifar.read([5])[0].shape == (1, 32, 32, 3)  # resize and crop apply to folders only
    # The archive is sorted by class: its first 200 images are airplanes, a seeded draw of 200 has all ten.
    spec = f"jpeg-npz:{shared_path('cifar10', 'cifar10_test_jpeg.npz')}"
    assert set(open_source(spec, limit=200).all()[1]) == {0}
    drawn = open_source(spec, limit=200, sample_seed=0)
    assert set(drawn.all()[1]) == set(range(10))
    np.testing.assert_array_equal(drawn.indices, np.sort(np.random.default_rng(0).permutation(10_000)[:200]))
    with pytest.raises(XaiJaxError, match="no t10k-images-idx3-ubyte"):
        open_source(f"idx:{shared_path('cifar10')}")


# ---------------------------------------------------------------------------------------------------------
# The batcher


def numbered_source(count: int) -> ArraySource:
    """Image ``i`` is filled with ``i``; label ``i % 3``."""
    images = np.broadcast_to(np.arange(count, dtype=np.float32)[:, None, None, None], (count, 2, 2, 1)).copy()
    return ArraySource(images, np.arange(count) % 3, class_names=["a", "b", "c"])


def test_batches_pad_the_last_batch():
    batches = Batches(numbered_source(7), batch_size=3, prefetch=0)
    out = list(batches)
    assert len(batches) == len(out) == 3 and batches.num_examples == 7
    assert [b["images"].shape for b in out] == [(3, 2, 2, 1)] * 3
    assert out[2]["mask"].tolist() == [True, False, False]
    assert out[2]["index"].tolist() == [6, -1, -1]
    assert out[2]["images"][:, 0, 0, 0].tolist() == [6, 6, 6]  # padding repeats the last valid image
    assert out[2]["labels"].tolist() == [0, 0, 0] and out[2]["labels"].dtype == np.int32
    exact = list(Batches(numbered_source(6), batch_size=3))
    assert len(exact) == 2 and all(b["mask"].all() for b in exact)
    assert exact[1]["index"].tolist() == [3, 4, 5]
    chosen = list(Batches(numbered_source(7), batch_size=4, indices=np.array([5, 0, 2])))
    assert len(chosen) == 1 and chosen[0]["index"].tolist() == [5, 0, 2, -1]
    assert chosen[0]["images"][:, 0, 0, 0].tolist() == [5, 0, 2, 2]
    with pytest.raises(ValueError):
        Batches(numbered_source(3), batch_size=0)


@settings(max_examples=40, deadline=None)
@given(count=st.integers(1, 23), batch_size=st.integers(1, 9), prefetch=st.integers(0, 3))
def test_batches_cover_every_item_once_in_order(count, batch_size, prefetch):
    batches = list(Batches(numbered_source(count), batch_size, prefetch=prefetch))
    assert len(batches) == -(-count // batch_size)
    valid = np.concatenate([b["images"][b["mask"], 0, 0, 0] for b in batches])
    np.testing.assert_array_equal(valid, np.arange(count))
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(index[index >= 0], np.arange(count))
    assert np.all(index[count:] == -1) and len(index) == len(batches) * batch_size


def test_prefetch_gives_the_same_batches():
    source = open_source("digits", limit=50)
    serial = list(Batches(source, 8, prefetch=0))
    for prefetch in (1, 4):
        threaded = list(Batches(source, 8, prefetch=prefetch))
        assert len(threaded) == len(serial) == 7
        for a, b in zip(serial, threaded):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


class FailingSource(Source):
    """Reads fine until item ``fail_at``; slow enough that the prefetcher runs ahead of the consumer."""

    class_names = ("x",)

    def __init__(self, count: int, fail_at: int | None = None, delay: float = 0.0):
        self.count, self.fail_at, self.delay, self.reads = count, fail_at, delay, 0

    def __len__(self):
        return self.count

    def read(self, indices):
        self.reads += 1
        time.sleep(self.delay)
        indices = np.asarray(indices)
        if self.fail_at is not None and self.fail_at in indices:
            raise XaiJaxError(f"cannot decode image item{self.fail_at}.png")
        return np.zeros((len(indices), 2, 2, 1), np.uint8), np.zeros(len(indices), np.int32)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "xai_jax-prefetch" and t.is_alive()]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_read_errors_reach_the_consumer(prefetch):
    seen = []
    with pytest.raises(XaiJaxError, match="item7.png"):
        for batch in Batches(FailingSource(10, fail_at=7), 3, prefetch=prefetch):
            seen.append(batch["index"].tolist())
    assert seen == [[0, 1, 2], [3, 4, 5]]  # the batches before the bad one still arrive


def test_breaking_out_early_stops_the_prefetcher():
    source = FailingSource(1000, delay=0.002)
    start = time.monotonic()
    for i, _ in enumerate(Batches(source, 2, prefetch=2)):
        if i == 2:
            break
    gc.collect()
    deadline = time.monotonic() + 5
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not prefetch_threads()
    assert source.reads < 20  # it stopped instead of reading all 500 batches
    assert time.monotonic() - start < 5


def test_decode_image_is_read_image_for_uploaded_bytes_with_a_pixel_cap(tmp_path):
    from xai_jax import models
    from xai_jax.data.sources import decode_image, read_image
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    spec = models.get("cifar_resnet20")
    data = (tmp_path / "x.png").read_bytes()
    np.testing.assert_array_equal(decode_image(data, spec), read_image(tmp_path / "x.png", spec))
    with pytest.raises(XaiJaxError, match="the uploaded image is 32x32, more than the 1,000 pixels allowed"):
        decode_image(data, spec, max_pixels=1000)
    with pytest.raises(XaiJaxError, match="^cannot decode the uploaded image: cannot identify image file$"):
        decode_image(b"not an image", spec)
    with pytest.raises(XaiJaxError, match="the uploaded image is empty"):
        decode_image(b"", spec)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(XaiJaxError, match="the uploaded image is 24x20; cifar_resnet20 takes 32x32 images"):
        decode_image((tmp_path / "small.png").read_bytes(), spec)
