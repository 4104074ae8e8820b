"""Input pipeline: images/s and images per CPU-second of the ImageNet evaluation transform (Resize(256),
CenterCrop(224)) through the library's folder source, against torchvision's ImageFolder + DataLoader (and grain),
with the same worker counts, in one run, plus the pixel comparison against torchvision.

The ImageNet-like tree is made here, without downloads, from the real CIFAR-10 test JPEGs of the shared data
folder: each image is cut to the tree's aspect ratio, upscaled (bicubic) to ``--size`` (portrait for every fourth
image) and saved as a JPEG of ``--quality``, into ``--classes`` class folders; the same arguments give the same files.

Every pipeline reads the tree for ``--epochs`` passes with its workers kept alive; the last pass is timed (the first
ones warm the page cache and start the workers). CPU time is this process's and all its children's, live worker
processes included (``/proc``), so it counts every core the pipeline used and little of what else runs on a shared
machine: images per CPU-second is the per-core number, images/s (wall) is this machine's. A 16-core host's rate is
projected as images per CPU-second x 16 (a projection: it assumes the pipeline scales to 16 workers).

  PYTHONPATH=. /work/tv-venv/bin/python experiments/bench_input.py --workers 1,2 --out bench_input.json

torchvision and grain are optional: a pipeline whose package is missing is skipped (the library's rows and their
pixel comparison against a Pillow reference of torchvision's transform still run). ``--smoke`` is a seconds-long
run on a tiny tree, for the test suite.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from experiments.benchutil import DATA, peer_row  # noqa: E402
from xai_jax.data import Batches, FolderSource  # noqa: E402
from xai_jax.data.sources import load_folder_image  # noqa: E402

RESIZE, CROP = 256, (224, 224)
TREE_MARKER = "bench_input_tree.json"


# ---------------------------------------------------------------------------------------------------------
# The ImageNet-like tree


def build_tree(root: pathlib.Path, count: int, classes: int, size: tuple[int, int], quality: int) -> dict:
    """Makes (or reuses, when its parameters match) the tree ``root/classNN/IIIII.jpg`` from CIFAR-10 test JPEGs.

    Args:
      root: the tree's folder; an existing folder is reused only if this function made it with the same
        parameters, and never overwritten otherwise.
      count: images; image ``i`` is CIFAR-10 test image ``i`` in class folder ``i % classes``.
      classes: class folders.
      size: ``(width, height)`` of the landscape images; every fourth image is portrait ``(height, width)``.
      quality: JPEG quality.

    Returns:
      the tree's parameters and its mean file size.
    """
    params = {"count": count, "classes": classes, "size": list(size), "quality": quality,
              "source": "cifar10/cifar10_test_jpeg.npz"}
    marker = root / TREE_MARKER
    if marker.is_file():
        made = json.loads(marker.read_text())
        if {k: made.get(k) for k in params} == params:
            return made
        raise SystemExit(f"{root} holds a tree made with other parameters ({made}); give another --tree")
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} exists and was not made by this benchmark; give another --tree")
    archive = np.load(DATA / "cifar10" / "cifar10_test_jpeg.npz")
    jpeg, offsets = archive["jpeg_bytes"], archive["offsets"]
    if count > len(offsets) - 1:
        raise SystemExit(f"at most {len(offsets) - 1} images")
    width, height = size
    rows = int(round(32 * min(width, height) / max(width, height)))  # the 32-pixel side cut to the aspect
    start = (32 - rows) // 2
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".staging-", dir=root.parent))
    total = 0
    for i in range(count):
        with Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())) as small:
            small = small.convert("RGB")
            if i % 4 == 3:  # portrait
                image = small.crop((start, 0, start + rows, 32)).resize((height, width), Image.BICUBIC)
            else:
                image = small.crop((0, start, 32, start + rows)).resize((width, height), Image.BICUBIC)
        folder = staging / f"class{i % classes:02d}"
        folder.mkdir(exist_ok=True)
        image.save(folder / f"{i:05d}.jpg", quality=quality)
        total += (folder / f"{i:05d}.jpg").stat().st_size
    made = {**params, "mean_file_kb": round(total / count / 1000, 1)}
    (staging / TREE_MARKER).write_text(json.dumps(made))
    if root.exists():
        root.rmdir()  # empty, checked above
    staging.rename(root)
    return made


# ---------------------------------------------------------------------------------------------------------
# CPU time of this process and all its children


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in pathlib.Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def _proc_cpu(pid: int) -> float:
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited meanwhile: its time is in our children's once it is waited for
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, of its waited-for children, and of its live descendants."""
    times = os.times()
    live = sum(_proc_cpu(pid) for pid in _descendants(os.getpid())) if os.path.isdir("/proc") else 0.0
    return times.user + times.system + times.children_user + times.children_system + live


# ---------------------------------------------------------------------------------------------------------
# The pipelines: each yields (images uint8 [b, 224, 224, 3] as NumPy or a CHW tensor, dataset indices)


def library_epochs(root, workers, batch_size, epochs, draft=False, processes=False):
    source = FolderSource(root, resize=RESIZE, crop=CROP, decode_workers=workers, draft=draft,
                          decode_processes=processes)
    for _ in range(epochs):
        def one_epoch():
            for batch in Batches(source, batch_size, prefetch=2):
                keep = batch["mask"]
                yield batch["images"][keep], batch["index"][keep]
        yield one_epoch()


def torchvision_epochs(root, workers, batch_size, epochs):
    import torch
    from torchvision import datasets, transforms

    torch.set_num_threads(1)  # as in DataLoader workers; the main process only receives batches
    transform = transforms.Compose([transforms.Resize(RESIZE), transforms.CenterCrop(CROP),
                                    transforms.PILToTensor()])
    dataset = datasets.ImageFolder(str(root), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                                         persistent_workers=workers > 0)
    for _ in range(epochs):
        def one_epoch():
            start = 0
            for images, _labels in loader:
                yield images, np.arange(start, start + len(images))
                start += len(images)
        yield one_epoch()


class _Paths:
    """grain's random-access source: ``(index, path)`` of each image (decoding is a transform, in the workers)."""

    def __init__(self, paths):
        self.paths = [str(p) for p in paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return index, self.paths[index]


def _grain_decode_class():
    import grain

    class Decode(grain.transforms.Map):
        """The library's decode (exact pixels) of one ``(index, path)`` record."""

        def map(self, record):
            index, path = record
            return {"image": load_folder_image(pathlib.Path(path), RESIZE, CROP), "index": np.int64(index)}

    return Decode


def grain_epochs(root, workers, batch_size, epochs):
    """grain's DataLoader: ``workers`` processes that each decode whole batches with the library's decode."""
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads absl flags; with jax installed it reads them before any app parsed them
        flags.FLAGS.mark_as_parsed()
    paths = _Paths(FolderSource(root).paths)
    count = len(paths)
    # One endless sampler (workers start once); "epochs" are runs of ceil(count / batch_size) batches.
    loader = grain.DataLoader(
        data_source=paths, worker_count=workers,
        sampler=grain.samplers.IndexSampler(count, shard_options=grain.sharding.NoSharding(), shuffle=False,
                                            num_epochs=None, seed=0),
        operations=[_grain_decode_class()(), grain.transforms.Batch(batch_size)],
        read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=batch_size))
    iterator = iter(loader)
    for _ in range(epochs):
        def one_epoch():
            for _ in range(-(-count // batch_size)):
                batch = next(iterator)
                yield batch["image"], batch["index"] % count
        yield one_epoch()


PIPELINES = {
    "library": lambda root, w, b, e: library_epochs(root, w, b, e),
    "library-draft": lambda root, w, b, e: library_epochs(root, w, b, e, draft=True),
    "library-processes": lambda root, w, b, e: library_epochs(root, w, b, e, processes=True),
    "torchvision": torchvision_epochs,
    "grain": grain_epochs,
}


def available(name: str) -> bool:
    module = {"torchvision": "torchvision", "grain": "grain"}.get(name)
    if module is None:
        return True
    import importlib.util
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------------------------------------
# Timing and pixel comparison


def as_hwc(images) -> np.ndarray:
    images = np.asarray(images)
    return images if images.shape[-1] == 3 else images.transpose(0, 2, 3, 1)  # torchvision's CHW


def time_pipeline(epochs_iter) -> tuple[float, float, list]:
    """Wall and CPU seconds of the last epoch, and its batches (kept for the comparison, outside the timing)."""
    batches = []
    for epoch in epochs_iter:
        batches.clear()
        wall, cpu = time.perf_counter(), cpu_seconds()
        for images, index in epoch:
            batches.append((images, index))
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return wall, cpu, batches


def gather(batches, count: int) -> tuple[np.ndarray, int]:
    """The epoch's images in dataset order, ``[count, 224, 224, 3]``, and how many it read: every index at least
    once (grain's endless sampler reads whole batches, so its pass may read the first few images again)."""
    out = np.zeros((count, *CROP, 3), np.uint8)
    seen = np.zeros(count, int)
    for images, index in batches:
        index = np.asarray(index)
        out[index] = as_hwc(images)
        np.add.at(seen, index, 1)
    if np.any(seen == 0):
        raise SystemExit(f"a pipeline never read {int((seen == 0).sum())} of the images")
    return out, int(seen.sum())


def reference_images(paths) -> np.ndarray:
    """torchvision's transform written out in Pillow calls (torchvision's documented Resize/CenterCrop rules),
    for when torchvision is missing: convert("RGB"), resize((w', h'), BILINEAR), crop(centre box)."""
    out = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("RGB")
            w, h = image.size
            w2, h2 = (RESIZE, int(RESIZE * h / w)) if w <= h else (int(RESIZE * w / h), RESIZE)
            image = image.resize((w2, h2), Image.BILINEAR)
            top, left = int(round((h2 - CROP[0]) / 2.0)), int(round((w2 - CROP[1]) / 2.0))
            out.append(np.asarray(image.crop((left, top, left + CROP[1], top + CROP[0]))))
    return np.stack(out)


def gil_share(paths, repeats: int = 2) -> dict:
    """How much of one image's decode holds the GIL, which bounds how far threads in one process scale.

    One thread decodes ``paths`` with the library's exact transform while the calls that release the GIL are
    timed: the JPEG decoder's ``decode`` and ``Image.resize``/``Image.crop`` (the resize includes the image's lazy
    load, whose Python-level file reading is thus counted as released: the share is a lower bound). The rest
    (``Image.open``'s header parsing, the array conversion, Python glue) runs under the GIL, so threads together
    cannot decode faster than ``1 / (share x seconds per image)``.
    """

    released, inside = [0.0], [False]
    get_decoder, resize, crop = Image._getdecoder, Image.Image.resize, Image.Image.crop

    class TimedDecoder:
        def __init__(self, decoder):
            self.decoder = decoder

        def decode(self, data):
            start = time.perf_counter()
            out = self.decoder.decode(data)
            released[0] += 0.0 if inside[0] else time.perf_counter() - start
            return out

        def __getattr__(self, name):
            return getattr(self.decoder, name)

    def timed(method):
        def call(self, *args, **kwargs):
            inside[0], start = True, time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                released[0] += time.perf_counter() - start
                inside[0] = False
        return call

    for path in paths[:16]:  # warm the page cache and the plugins
        load_folder_image(path, RESIZE, CROP)
    Image._getdecoder = lambda *a, **k: TimedDecoder(get_decoder(*a, **k))
    Image.Image.resize, Image.Image.crop = timed(resize), timed(crop)
    try:
        start = time.perf_counter()
        for _ in range(repeats):
            for path in paths:
                load_folder_image(path, RESIZE, CROP)
        total = time.perf_counter() - start
    finally:
        Image._getdecoder, Image.Image.resize, Image.Image.crop = get_decoder, resize, crop
    share = 1.0 - released[0] / total
    per_image = total / (repeats * len(paths))
    return {"share_holding_gil": round(share, 3), "ms_per_image_one_thread": round(1e3 * per_image, 3),
            "threads_cap_images_per_s": round(1.0 / (share * per_image)) if share > 0 else None,
            "threads_scale_to": round(1.0 / share, 1) if share > 0 else None}


def compare(images: np.ndarray, reference: np.ndarray) -> dict:
    diff = np.abs(images.astype(np.int16) - reference.astype(np.int16))
    per_image = diff.reshape(len(diff), -1).max(1)
    return {"max_abs_diff": int(diff.max()), "mean_abs_diff": float(diff.mean()),
            "exact_image_fraction": float(np.mean(per_image == 0)),
            "differing_pixel_fraction": float(np.mean(diff != 0))}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=pathlib.Path, help="the tree's folder (default: one under the temp folder, "
                   "named after its parameters)")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the landscape images (default 500x375)")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default 1,2)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2, help="passes per pipeline; the last one is timed")
    p.add_argument("--pipelines", default=",".join(PIPELINES), help="which, comma-separated")
    p.add_argument("--out", type=pathlib.Path, help="write the results here as JSON")
    p.add_argument("--smoke", action="store_true", help="a tiny tree and one pass: a seconds-long check")
    args = p.parse_args(argv)
    if args.smoke:
        args.count, args.classes, args.size, args.batch_size, args.epochs = 24, 3, "300x200", 8, 1
        args.workers = args.workers if args.workers != "1,2" else "1"
    return args


def measure(args: argparse.Namespace, progress: bool = True) -> dict:
    """Builds (or reuses) the tree and times every pipeline of ``args`` for every worker count.

    Args:
      args: :func:`parse_args`'s options.
      progress: print one line a pipeline as it finishes.

    Returns:
      the run's record (what ``--out`` writes): the machine, the tree, ``rows`` (one a pipeline and worker count),
      ``skipped`` (pipelines whose package is missing) and the GIL measurement.
    """
    size = tuple(int(v) for v in args.size.lower().split("x"))
    workers = [int(w) for w in args.workers.split(",")]
    names = [n for n in args.pipelines.split(",") if n]
    unknown = [n for n in names if n not in PIPELINES]
    if unknown:
        raise SystemExit(f"unknown pipeline {unknown[0]}; known: {', '.join(PIPELINES)}")
    skipped = [n for n in names if not available(n)]
    names = [n for n in names if n not in skipped]
    tree_dir = args.tree or pathlib.Path(tempfile.gettempdir()) / (
        f"xai_jax_input_tree_{args.count}_{args.classes}_{size[0]}x{size[1]}_q{args.quality}")
    tree = build_tree(tree_dir, args.count, args.classes, size, args.quality)
    paths = FolderSource(tree_dir).paths
    if "torchvision" in names:  # the same files in the same order, or the comparison means nothing
        from torchvision import datasets
        assert [pathlib.Path(p) for p, _ in datasets.ImageFolder(str(tree_dir)).samples] == paths
    reference, reference_from = None, None
    if "torchvision" not in names:
        reference, reference_from = reference_images(paths), "Pillow calls of torchvision's documented transform"
    rows = []
    order = ["torchvision"] + [n for n in names if n != "torchvision"] if "torchvision" in names else names
    for w in workers:
        for name in order:
            wall, cpu, batches = time_pipeline(PIPELINES[name](tree_dir, w, args.batch_size, args.epochs))
            images, read = gather(batches, len(paths))
            del batches
            if name == "torchvision" and reference is None:
                reference, reference_from = images, "torchvision"
            row = {"pipeline": name, "workers": w, "images": read, "wall_s": round(wall, 3),
                   "cpu_s": round(cpu, 3), "images_per_s": round(read / wall, 1),
                   "images_per_cpu_s": round(read / cpu, 1),
                   "projected_16_core_images_per_s": round(16 * read / cpu),
                   "pixels_vs_reference": compare(images, reference)}
            rows.append(row)
            if progress:
                print(f"{name:14s} workers={w}: {row['images_per_s']:8.1f} images/s  "
                      f"{row['images_per_cpu_s']:7.1f} images/CPU-s  "
                      f"max|diff|={row['pixels_vs_reference']['max_abs_diff']}", flush=True)
    gil = gil_share(paths[:min(len(paths), 400)])
    result = {
        "command": " ".join([pathlib.Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {"cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "pillow": Image.__version__, "load_average": os.getloadavg()},
        "tree": {**tree, "path": str(tree_dir)}, "transform": "Resize(256) then CenterCrop(224), uint8 out "
        "(torchvision: PILToTensor, CHW; the library: HWC NumPy)", "batch_size": args.batch_size,
        "timed": f"the last of {args.epochs} passes", "reference": reference_from, "skipped": skipped, "rows": rows,
        "gil": gil,
    }
    return result


def peer_rows(result: dict) -> list[dict]:
    """The library's default pipeline against torchvision's at each worker count, in CPU seconds of the timed
    pass (the per-core cost, which another job on the machine changes the least): :func:`benchutil.peer_row`."""
    torchvision = {r["workers"]: r for r in result["rows"] if r["pipeline"] == "torchvision"}
    tree = result["tree"]
    sizes = f"{tree['count']} JPEGs {tree['size'][0]}x{tree['size'][1]}, batch {result['batch_size']}"
    rows = []
    for mine in result["rows"]:
        theirs = torchvision.get(mine["workers"])
        if mine["pipeline"] == "library" and theirs is not None:
            rows.append(peer_row(f"folder source, {mine['workers']} decode workers (CPU s)", mine["cpu_s"],
                                 theirs["cpu_s"], "torchvision ImageFolder + DataLoader", sizes,
                                 max_abs_diff=mine["pixels_vs_reference"]["max_abs_diff"]))
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = measure(args)
    print_table(result)
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.out)
    return result


def print_table(result: dict) -> None:
    print(f"\n{result['tree']['count']} JPEGs {result['tree']['size'][0]}x{result['tree']['size'][1]} q"
          f"{result['tree']['quality']}, batch {result['batch_size']}, pixels against {result['reference']}")
    print("| pipeline | workers | images/s (wall) | images per CPU-second | 16 cores (projected) | max abs diff | "
          "exact images |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        px = r["pixels_vs_reference"]
        print(f"| {r['pipeline']} | {r['workers']} | {r['images_per_s']:,.0f} | {r['images_per_cpu_s']:,.0f} | "
              f"{r['projected_16_core_images_per_s']:,} | {px['max_abs_diff']} | {100 * px['exact_image_fraction']:.1f} % |")
    gil = result["gil"]
    print(f"GIL: {100 * gil['share_holding_gil']:.1f} % of an image's {gil['ms_per_image_one_thread']} ms holds it, "
          f"so threads in one process top out near {gil['threads_scale_to']} busy threads, "
          f"{gil['threads_cap_images_per_s']} images/s on this machine")
    if result["skipped"]:
        print(f"skipped (not installed): {', '.join(result['skipped'])}")


if __name__ == "__main__":
    main()
