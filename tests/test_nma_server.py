"""The near-miss explorer (``xai-jax nma serve``): its JSON API over HTTP, and the page in a real browser.

One real result for the module: ResNet-20's near misses on 1,000 CIFAR-10 test JPEGs, fitted by the command line;
one real server on a copy of it, started as a user would (``xai-jax nma serve`` in its own process), serving the
images of those JPEGs and classifying queries with the same ResNet-20. The browser tests drive Debian's Chromium
through Playwright (no browser download); without either they skip, or fail where ``XAI_JAX_REQUIRE_DATA=1``.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import io
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from conftest import REQUIRE_DATA, require_module, shared_path, snapshot
from xai_jax import cli

pytestmark = pytest.mark.xdist_group("explorer")  # one result and one server for the whole module

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
UPLOAD_LIMIT = 65536  # --max-upload-mb 0.0625: a CIFAR-sized PNG fits, the oversized upload test stays small


@pytest.fixture(scope="module")
def wordnet():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NLTK_DATA", str(shared_path("nltk_data")))
        yield


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, wordnet) -> pathlib.Path:
    """``xai-jax nma fit`` of ResNet-20 on 1,000 CIFAR-10 test JPEGs (a seeded draw), scored against WordNet."""
    out = tmp_path_factory.mktemp("explorer") / "nma20"
    code = cli.main(["--quiet", "nma", "fit", "--model", "cifar_resnet20", "--weights",
                     str(shared_path("cifar10_resnet", "resnet20-12fca82f.th")), "--data",
                     f"jpeg-npz:{shared_path('cifar10', 'cifar10_test_jpeg.npz')}", "--limit", "1000",
                     "--sample-seed", "0", "--out", str(out)])
    assert code == 0
    return out


@contextlib.contextmanager
def running(result: pathlib.Path, *extra: str):
    """``xai-jax nma serve --result DIR --port 0`` in its own process; yields the port it printed."""
    log = result.parent / f"{result.name}-serve.log"
    with open(log, "w") as errors:
        process = subprocess.Popen([sys.executable, "-m", "xai_jax.cli", "nma", "serve", "--result", str(result),
                                    "--port", "0", *extra], stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        line = process.stdout.readline()  # the one line it prints, once it listens
        found = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
        assert found, (line, log.read_text())
        yield int(found.group(1))
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(fitted, tmp_path_factory):
    """The server on a copy of the fitted result: ``(result folder, port)``."""
    folder = tmp_path_factory.mktemp("served") / "nma20"
    shutil.copytree(fitted, folder)
    with running(folder, "--max-upload-mb", str(UPLOAD_LIMIT / (1 << 20))) as port:
        yield folder, port


def request(port: int, method: str, path: str, body=None, headers=None):
    """``(status, parsed JSON or raw bytes)`` of one request; the path is sent exactly as given."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, data


def on_disk(folder: pathlib.Path) -> dict:
    return json.loads((folder / "nma.json").read_text())


def foolbox_png(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec("foolbox")  # found without importing it (slow) for a few PNGs
    if spec is None:
        require_module("foolbox")
    return pathlib.Path(spec.origin).parent / "data" / name


def explain_cli(capsys, *args: str) -> list[str]:
    capsys.readouterr()
    assert cli.main(["nma", "explain", *args]) == 0
    return capsys.readouterr().out.splitlines()


def node_of(tree: dict, members) -> int:
    """The node whose labels are ``members`` (class names), from the API's tree."""
    c = len(tree["labels"])
    sets = [{i} for i in range(c)]
    for a, b in tree["children"]:
        sets.append(sets[a] | sets[b])
    wanted = {tree["labels"].index(m) for m in members}
    return sets.index(wanted)


# --- the JSON API ----------------------------------------------------------------------------------------------

def test_api_tree_node_label_and_image_are_the_results(served):
    from xai_jax.data import JpegNpzSource, subset
    from xai_jax.methods.nma import NMAResult
    from xai_jax.naming.wordnet import load_wordnet
    folder, port = served
    result = NMAResult.load(folder)
    status, tree = request(port, "GET", "/api/tree")
    assert status == 200 and tree["labels"] == CIFAR10
    np.testing.assert_array_equal(tree["children"], result.linkage[:, :2])
    np.testing.assert_allclose(tree["heights"], result.linkage[:, 2])
    assert tree["names"] == [result.name_of(m) for m in result.members()[10:]]
    assert tree["score"] == on_disk(folder)["notes"]["score"] and tree["score"]["reference"] == "wordnet"
    assert tree["model"] == "cifar_resnet20" and tree["data_size"] == 1000 and tree["undo"] == 0

    vehicles = node_of(tree, ["automobile", "truck"])
    status, node = request(port, "GET", f"/api/nodes/{vehicles}")
    assert status == 200 and node["name"] == "motor vehicle" and node["size"] == 2
    assert [m["name"] for m in node["members"]] == ["automobile", "truck"]
    first = node["candidates"][0]
    assert first["name"] == "motor vehicle" and first["synset"] == "motor_vehicle.n.01"
    assert first["gloss"] == load_wordnet().synset("motor_vehicle.n.01").definition()
    assert "vehicle" in [c["name"] for c in node["candidates"]]  # a hypernym further up
    assert node["path"][-1] == 18 and node["parent"] == node["path"][1]

    status, cat = request(port, "GET", "/api/labels/3")
    events = result.events[3].copy()
    events[3] = -1
    assert status == 200 and cat["near_misses"][0]["index"] == int(np.argmax(events))  # dog, by far
    assert [m["events"] for m in cat["near_misses"]] == sorted((m["events"] for m in cat["near_misses"]), reverse=True)
    source = subset(JpegNpzSource(shared_path("cifar10", "cifar10_test_jpeg.npz")), 1000, seed=0)
    labels = source.source.labels[source.indices]
    assert cat["images"] == np.flatnonzero(labels == 3)[:6].tolist()
    status, png = request(port, "GET", f"/api/images/{cat['images'][0]}")
    assert status == 200 and png.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), source.read([cat["images"][0]])[0][0])


def test_api_rename_is_saved_at_once_scored_and_undone(served):
    from xai_jax.methods.nma import NMAResult
    from xai_jax.naming import hierarchy
    from xai_jax.naming.wordnet import synset
    folder, port = served
    before = snapshot(folder, contents=True)
    _, tree = request(port, "GET", "/api/tree")
    pets = node_of(tree, ["cat", "dog"])
    status, done = request(port, "PUT", f"/api/nodes/{pets}/name", {"name": "  house   pets "})
    assert status == 200 and done["name"] == "house pets" and done["overridden"] and done["undo"] == 1
    saved = on_disk(folder)
    assert saved["overrides"] == {"3,5": "house pets"}
    loaded = NMAResult.load(folder)
    assert "A cat is part of the concept house pets (cat, dog)" in loaded.explain("cat").text()
    # The score is the paper's against WordNet's tree, recomputed: "carnivore" (cat, dog) is gone from the machine
    # side, so cat and dog lose one matched concept each.
    human = hierarchy.wordnet_hierarchy([synset(s) for s in loaded.synsets])
    phi, phi_m = hierarchy.explanatory_score(human, loaded.concepts(), 10, match="name")
    assert done["score"]["phi_M"] == pytest.approx(phi_m) == saved["notes"]["score"]["phi_M"]
    assert phi_m < before_score(before) and saved["notes"]["score"]["phi"]["cat"] == pytest.approx(phi[3])
    assert sorted(snapshot(folder)) == sorted(before)  # nma.json replaced in place, no file left beside it
    assert request(port, "GET", f"/api/nodes/{pets}")[1]["name"] == "house pets"

    status, done = request(port, "DELETE", f"/api/nodes/{pets}/name")  # back to WordNet's name: undoable too
    assert status == 200 and done["name"] == "carnivore" and not done["overridden"] and done["undo"] == 2
    assert on_disk(folder)["overrides"] == {}
    assert request(port, "POST", "/api/undo")[1]["name"] == "house pets"
    assert on_disk(folder)["overrides"] == {"3,5": "house pets"}
    status, done = request(port, "POST", "/api/undo")
    assert status == 200 and done["name"] == "carnivore" and done["undo"] == 0
    assert snapshot(folder, contents=True) == before  # byte for byte the result it was
    status, refused = request(port, "POST", "/api/undo")
    assert status == 409 and refused["error"] == "nothing to undo"


def before_score(files: dict) -> float:
    return json.loads(files["nma.json"])["notes"]["score"]["phi_M"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "<script>alert(1)</script>", "../../etc/passwd", "a/b",
                                  "bell\x07", "nul\x00", "semi;colon", "_hidden", "snake_case", 7, None, ["pets"]])
def test_api_refuses_bad_names_and_changes_nothing(served, name):
    folder, port = served
    before = snapshot(folder, contents=True)
    status, refused = request(port, "PUT", "/api/nodes/10/name", {"name": name})
    assert status == 400 and "name" in refused["error"] and "\n" not in refused["error"]
    assert snapshot(folder, contents=True) == before


def test_api_refuses_what_it_must(served):
    folder, port = served
    before = snapshot(folder, contents=True)
    png = foolbox_png("cifar10_00_3.png").read_bytes()
    refusals = [
        (("PUT", "/api/nodes/3/name", {"name": "kitty"}), 400, "only concepts"),  # a label, not a concept
        (("PUT", "/api/nodes/99/name", {"name": "x"}), 404, "no node 99"),
        (("PUT", "/api/nodes/10/name", b'{"name": "x"}', {"Content-Type": "text/plain"}), 415, "JSON"),
        (("PUT", "/api/nodes/10/name", b"{not json", {"Content-Type": "application/json"}), 400, "not valid JSON"),
        (("GET", "/api/nodes/10/name"), 405, "not allowed"),
        (("POST", "/api/query", b"\0" * (UPLOAD_LIMIT + 1), {"Content-Type": "image/png"}), 413, "at most 65,536"),
        (("POST", "/api/query", b"GIF89a not really", {"Content-Type": "image/gif"}), 400, "cannot decode"),
        (("POST", "/api/query", png, {"Content-Type": "text/plain"}), 415, "image file"),
        (("POST", "/api/query", {"data_index": 1000}), 404, "no image 1000"),
        (("POST", "/api/query", {"data_index": "x"}), 400, "integer"),
        (("GET", "/api/images/5", None, {"Host": "attacker.example"}), 403, "refused"),
    ]
    for args, status, message in refusals:
        got, answer = request(port, *args)
        assert got == status and message in answer["error"], (args[:2], got, answer)
    # No path reaches a file: traversal, encoded or not, finds nothing, and never the result's own files.
    for path in ["/static/../nma.json", "/%2e%2e/nma.json", "/static/%2e%2e/server.py", "/static/..%2f..%2fnma.json",
                 "/api/images/../../nma.json", "/nma.json", "/static/app.js/../../../nma.json", "//etc/passwd",
                 "/static/" + "../" * 12 + "etc/passwd"]:
        status, answer = request(port, "GET", path)
        assert status == 404 and answer["error"].startswith("nothing at"), path
    assert snapshot(folder, contents=True) == before
    status, page = request(port, "GET", "/")
    assert status == 200 and b"/static/app.js" in page and b"http" not in page.replace(b"http://www.w3.org", b"")


def test_api_query_says_what_nma_explain_says(served, capsys):
    folder, port = served
    image = foolbox_png("cifar10_00_3.png")  # a cat
    status, answer = request(port, "POST", "/api/query", image.read_bytes(), {"Content-Type": "image/png"})
    assert status == 200
    assert answer["printed"] == explain_cli(capsys, "--result", str(folder), "--image", str(image))
    assert answer["name"] == "cat" and answer["explanation"].startswith("A cat is part of the concept carnivore")
    assert answer["path"][0] == 3 and answer["path"][-1] == 18
    assert all(m["p"] < answer["p"] for m in answer["near_misses"]) and len(answer["near_misses"]) <= 2  # K = 3

    status, answer = request(port, "POST", "/api/query", {"data_index": 7})
    assert status == 200 and answer["data_index"] == 7 and answer["true_name"] in CIFAR10
    assert answer["explanation"] == explain_cli(capsys, "--result", str(folder), "--label", answer["name"])[0]
    assert request(port, "GET", f"/api/explain/{answer['label']}")[1]["explanation"] == answer["explanation"]


def test_a_port_in_use_is_one_line(fitted, capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        capsys.readouterr()
        assert cli.main(["nma", "serve", "--result", str(fitted), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == (f"xai-jax: error: port {port} on 127.0.0.1 is in use; stop what holds it or pass another --port "
                   f"(--port 0 picks a free one)\n")


def test_serve_without_model_or_data_still_browses_and_names(tmp_path, capsys, wordnet):
    """A result fitted from saved scores names no model: the page browses and renames, queries say why not."""
    from xai_jax.methods.nma.server import Explorer, make_server
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)) + 6 * np.eye(10)[np.arange(200) % 10]
    np.savez(tmp_path / "s.npz", logits=logits, labels=np.arange(200) % 10, class_names=np.array(CIFAR10))
    assert cli.main(["--quiet", "nma", "--from-probs", str(tmp_path / "s.npz"), "--out", str(tmp_path / "r")]) == 0
    server = make_server(Explorer(tmp_path / "r"), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        status, tree = request(port, "GET", "/api/tree")
        assert status == 200 and tree["model"] is None and not tree["data"] and tree["score"] is None
        status, answer = request(port, "POST", "/api/query", {"data_index": 0})
        assert status == 409 and "--model" in answer["error"]
        status, answer = request(port, "GET", "/api/images/0")
        assert status == 409 and "--data" in answer["error"]
        assert request(port, "PUT", "/api/nodes/18/name", {"name": "everything"})[0] == 200
        assert on_disk(tmp_path / "r")["overrides"] == {",".join(map(str, range(10))): "everything"}
    finally:
        server.shutdown()
        server.server_close()


# --- the page, in Chromium --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    playwright_api = require_module("playwright.sync_api").sync_api
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing (Debian's chromium package; .ci/run installs it)"
        if REQUIRE_DATA:
            pytest.fail(message)
        pytest.skip(message)
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served):
    """A fresh tab on the explorer; a test fails on any script error, or console error other than the answers
    the test asked to be refused (the browser logs each 4xx answer)."""
    _, port = served
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" and not
           message.text.startswith("Failed to load resource: the server responded with a status of 4") else None)
    tab.goto(f"http://127.0.0.1:{port}/")
    tab.wait_for_selector("body[data-ready='1']")
    yield tab
    context.close()
    assert not errors, errors


def expect(locator):
    from playwright.sync_api import expect as playwright_expect
    return playwright_expect(locator)


def test_page_shows_every_label_and_concept_and_searches(page, served):
    _, port = served
    tree = request(port, "GET", "/api/tree")[1]
    assert sorted(page.locator("#tree text.leaf").all_text_contents()) == sorted(CIFAR10)
    concepts = page.locator("#tree text.concept").all_text_contents()
    assert sorted(concepts) == sorted(f"{n} · {h:.4f}" for n, h in zip(tree["names"], tree["heights"]))
    assert page.locator("#score").inner_text() == f"φ(M) = {tree['score']['phi_M']:.3f} vs wordnet"
    page.locator(f"#tree rect[data-toggle='{node_of(tree, CIFAR10[:2] + CIFAR10[8:])}']").click()  # collapse
    assert sorted(page.locator("#tree text.leaf").all_text_contents()) == ["bird", "cat", "deer", "dog", "frog",
                                                                         "horse"]
    assert page.locator("#tree text.tip").text_content().startswith("vehicle (4 labels)")
    page.fill("#search", "tru")
    page.keyboard.press("Enter")  # reveals truck inside the collapsed vehicles
    page.wait_for_selector("#tree text.leaf.flash[data-node='9']")
    assert page.locator("#node-name").inner_text() == "truck"
    page.wait_for_selector("#node-panel .explanation")
    assert "A truck is part of the concept motor vehicle (automobile, truck)" in page.locator(
        "#node-panel .explanation").inner_text()


def test_page_hover_shows_images_and_near_misses(page, served):
    _, port = served
    cat = request(port, "GET", "/api/labels/3")[1]
    page.hover("#tree text.leaf[data-node='3']")
    page.wait_for_selector("#tooltip img")
    tip = page.locator("#tooltip")
    assert tip.locator("img").count() == len(cat["images"]) == 6
    assert f"{cat['near_misses'][0]['name']} ({cat['near_misses'][0]['events']}×)" in tip.inner_text()
    # complete is also true for an image that failed, which the sizes below then show as 0
    for image in tip.locator("img").all():
        expect(image).to_have_js_property("complete", True)
    sizes = page.evaluate("[...document.querySelectorAll('#tooltip img')].map(i => i.naturalWidth)")
    assert sizes == [32] * 6  # the images really came back


def test_page_renames_saves_and_undoes(page, served):
    folder, port = served
    tree = request(port, "GET", "/api/tree")[1]
    vehicles = node_of(tree, ["automobile", "truck"])
    page.click(f"#tree text.concept[data-node='{vehicles}']")
    page.wait_for_selector("#name-input")
    assert page.locator("#node-name").inner_text() == "motor vehicle"
    assert "self-propelled vehicle" in page.locator(".candidates").inner_text()
    page.click("[data-candidate='self-propelled vehicle']")  # a candidate fills the field
    assert page.input_value("#name-input") == "self-propelled vehicle"
    page.fill("#name-input", "road vehicle")
    page.click("#save-name")
    page.wait_for_selector(".badge")
    assert page.locator("#node-name").inner_text() == "road vehicle"
    assert page.locator(f"#tree text.concept[data-node='{vehicles}']").text_content().startswith("road vehicle · ")
    assert on_disk(folder)["overrides"] == {"1,9": "road vehicle"}
    page.fill("#name-input", "<b>bold</b>")
    page.click("#save-name")
    expect(page.locator("#name-error")).to_contain_text("letters, digits")
    assert on_disk(folder)["overrides"] == {"1,9": "road vehicle"}
    page.click("#undo")
    expect(page.locator(f"#tree text.concept[data-node='{vehicles}']")).to_have_text(re.compile("^motor vehicle · "))
    assert page.locator("#node-name").inner_text() == "motor vehicle" and page.is_disabled("#undo")
    assert on_disk(folder)["overrides"] == {}


def test_page_queries_an_upload_and_a_data_image_as_nma_explain(page, served, capsys):
    folder, _ = served
    image = foolbox_png("cifar10_08_3.png")  # another cat
    page.click("#tab-query")
    page.set_input_files("#upload", str(image))
    page.wait_for_selector("#explanation")
    printed = explain_cli(capsys, "--result", str(folder), "--image", str(image))
    assert page.locator("#explanation").inner_text() == printed[1]
    predicted = printed[0].split()[2]
    assert page.locator("#prediction").inner_text().startswith(predicted + " (p = ")
    index = CIFAR10.index(predicted)
    assert page.locator("#tree text.leaf.on-path").text_content() == predicted
    assert page.locator(f"#tree text.leaf[data-node='{index}']").get_attribute("class").count("on-path") == 1
    on_path = page.locator("#tree path.link.on-path").count()
    assert on_path == len(request(served[1], "GET", f"/api/labels/{index}")[1]["path"]) - 1  # one link per step up

    page.fill("#data-index", "11")
    page.click("#query-data")
    expect(page.locator("#prediction")).to_contain_text("true label")
    name = page.locator("#prediction").inner_text().split(" (p = ")[0]
    assert page.locator("#explanation").inner_text() == explain_cli(capsys, "--result", str(folder), "--label",
                                                                     name)[0]


@pytest.fixture(scope="module")
def imagenet_sized(tmp_path_factory):
    """A result over ImageNet's 1,000 labels (its wnids) from probabilities whose near misses are each label's
    neighbours in the class order (which keeps related classes together), served in this process."""
    from xai_jax.methods.nma import NearMissAnalysis
    from xai_jax.methods.nma.server import Explorer, make_server
    wnids = shared_path("imagenet", "imagenet_synsets.txt").read_text().split()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(1000), 2)
    logits = rng.normal(size=(2000, 1000))
    logits[np.arange(2000), labels] += 12
    logits[np.arange(2000), (labels + rng.integers(-4, 5, 2000)) % 1000] += 6
    result = NearMissAnalysis().fit_scores(logits, labels, wnids, from_logits=True, names=False, progress=False)
    folder = tmp_path_factory.mktemp("imagenet") / "nma"
    result.save(folder)
    server = make_server(Explorer(folder), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield wnids, server.server_address[1]
    server.shutdown()
    server.server_close()


def test_page_with_imagenet_labels_draws_only_what_is_expanded(browser, imagenet_sized):
    wnids, port = imagenet_sized
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.goto(f"http://127.0.0.1:{port}/")
    tab.wait_for_selector("body[data-ready='1']")
    rows = int(tab.get_attribute("#tree", "data-rows"))
    assert 30 <= rows <= 60  # the top of the tree: collapsed subtrees, not 1,000 rows
    assert tab.locator("#tree text.leaf").count() + tab.locator("#tree text.tip").count() == rows
    assert tab.locator("#tree circle.node").count() == rows - 1  # one per expanded concept
    shown = set(tab.locator("#tree text.leaf").all_text_contents())
    target = next(w for w in wnids[::-1] if w not in shown)
    tab.fill("#search", target)
    tab.keyboard.press("Enter")  # expands the path to it, and only that
    tab.wait_for_selector(f"#tree text.leaf.flash[data-node='{wnids.index(target)}']")
    path = request(port, "GET", f"/api/labels/{wnids.index(target)}")[1]["path"]
    assert int(tab.get_attribute("#tree", "data-rows")) <= rows + len(path)
    tab.click("#expand")  # everything under the root, up to 2,000 rows
    expect(tab.locator("#tree")).to_have_attribute("data-rows", "1000")
    assert sorted(tab.locator("#tree text.leaf").all_text_contents()) == sorted(wnids)
    context.close()
