"""Screenshots of the near-miss explorer's three views (hierarchy, naming, querying) for the README.

Fits ResNet-56's near misses on the 10,000 CIFAR-10 test JPEGs (../shared/data), serves a copy of the result with
``xai-jax nma serve`` and drives Debian's Chromium through Playwright, as the tests do (no browser download):

    python experiments/explorer_screenshots.py --out docs/

Writes OUT/explorer_hierarchy.png, OUT/explorer_naming.png and OUT/explorer_query.png. ``--result DIR`` takes an
existing result instead of fitting one (it is copied: the script renames a concept).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("XAI_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def fit(out: pathlib.Path, model: str, weights: str, limit: int | None) -> None:
    command = [sys.executable, "-m", "xai_jax.cli", "--quiet", "nma", "fit", "--model", model, "--weights",
               str(DATA / "cifar10_resnet" / weights), "--data",
               f"jpeg-npz:{DATA / 'cifar10' / 'cifar10_test_jpeg.npz'}", "--out", str(out)]
    if limit:
        command += ["--limit", str(limit), "--sample-seed", "0"]
    subprocess.run(command, check=True)


def confidence(url: str, image: pathlib.Path) -> float:
    """The probability of the label the served model predicts for an image file (through the JSON API)."""
    request = urllib.request.Request(url + "api/query", data=image.read_bytes(), method="POST",
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)["p"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs")
    parser.add_argument("--result", help="an existing NMA result (default: fit ResNet-56 on CIFAR-10)")
    parser.add_argument("--limit", type=int, help="fit on a seeded draw of this many test images")
    args = parser.parse_args()
    os.environ.setdefault("NLTK_DATA", str(DATA / "nltk_data"))
    from playwright.sync_api import expect, sync_playwright
    work = pathlib.Path(tempfile.mkdtemp(prefix="explorer-shots-"))
    try:
        folder = work / "nma56"
        if args.result:
            shutil.copytree(args.result, folder)
        else:
            fit(folder, "cifar_resnet56", "resnet56-4bfd9763.th", args.limit)
        server = subprocess.Popen([sys.executable, "-m", "xai_jax.cli", "nma", "serve", "--result", str(folder),
                                   "--port", "0"], stdout=subprocess.PIPE, text=True)
        try:
            url = re.search(r"at (http://\S+/)", server.stdout.readline()).group(1)
            # The query: of foolbox's CIFAR-10 samples, the one the model is least sure of (it has near misses).
            samples = sorted((pathlib.Path(importlib.util.find_spec("foolbox").origin).parent / "data")
                             .glob("cifar10_*.png"))
            query = min(samples, key=lambda path: confidence(url, path))
            out = pathlib.Path(args.out)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.goto(url)
                page.wait_for_selector("body[data-ready='1']")
                # Hierarchy: the dendrogram, and what hovering a label shows.
                page.click("#tree text.leaf[data-node='3']")  # cat: its panel, and the tooltip on hover
                page.hover("#tree text.leaf[data-node='5']")  # dog
                page.wait_for_selector("#tooltip img")
                for _ in range(100):  # the page's policy refuses eval, so no wait_for_function
                    if page.evaluate("[...document.querySelectorAll('#tooltip img')].every(i => i.complete)"):
                        break
                    time.sleep(0.1)
                page.screenshot(path=out / "explorer_hierarchy.png")
                page.mouse.move(5, 600)
                # Naming: a concept's members and WordNet's candidates, renamed (the score updates).
                node = page.locator("#tree text.concept", has_text=re.compile("^carnivore"))
                node.first.click()
                page.wait_for_selector("#name-input")
                page.fill("#name-input", "pets")
                page.click("#save-name")
                page.wait_for_selector(".badge")
                page.screenshot(path=out / "explorer_naming.png")
                page.click("#undo")
                expect(page.locator("#undo")).to_be_disabled()
                # Querying: an uploaded image, its near misses and explanation, its path in the dendrogram.
                page.click("#tab-query")
                page.set_input_files("#upload", str(query))
                page.wait_for_selector("#explanation")
                page.screenshot(path=out / "explorer_query.png")
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = ("explorer_hierarchy.png", "explorer_naming.png", "explorer_query.png")
    print("wrote " + ", ".join(str(pathlib.Path(args.out) / name) for name in names))


if __name__ == "__main__":
    main()
