"""The README's Python quick start runs as written, on the real files it names."""

from __future__ import annotations

import re

import numpy as np

from conftest import REPO, shared_path


def test_python_quick_start_runs():
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    code = code.replace('"resnet56-4bfd9763.th"', repr(str(shared_path("cifar10_resnet", "resnet56-4bfd9763.th"))))
    code = code.replace('"cifar10_test_jpeg.npz"', repr(str(shared_path("cifar10", "cifar10_test_jpeg.npz"))))
    code = code.replace("test = data.JpegNpzSource(", "test = data.Subset(data.JpegNpzSource(").replace(
        "npz')", "npz'), np.arange(0, 10000, 50))")  # every 50th image: 20 per class keeps the test short
    namespace = {"np": np}
    exec(compile(code, "README.md", "exec"), namespace)
    out, counts, state = namespace["out"], namespace["counts"], namespace["state"]
    assert out["layer3"].shape == (200, 8, 8, 64) and out["pool"].shape == (200, 64)
    assert counts.sum() == 200 and np.trace(counts) / 200 > 0.7
    np.testing.assert_array_equal(state["counts"], np.full(10, 20.0))
    np.testing.assert_allclose(state["sums"] / 20, np.stack([out["pool"][out["labels"] == c].mean(0)
                                                            for c in range(10)]), rtol=1e-4, atol=1e-5)
