"""The near-miss explorer: a local web page over an NMA result (``xai-jax nma serve``), and its JSON API.

:class:`Explorer` holds one result folder and answers every question the page asks (the tree, a node's members
and WordNet's candidate names, a label's images and near misses, a query), and writes renames into the result's
``overrides`` at once, atomically (:meth:`NMAResult.rewrite_summary`, through :func:`xai_jax.outputs.replace_file`),
with an undo stack. :func:`make_server` puts it behind the standard library's ``ThreadingHTTPServer``; the page
(``static/``: plain JavaScript and SVG, no build step, nothing fetched from elsewhere) uses the same API as scripts
do. The API, all JSON unless said (errors: ``{"error": "one line"}`` with a 4xx status):

- ``GET /api/tree``: labels, the dendrogram (``children``, ``heights``, ``sizes`` of internal node ``C + i``), each
  internal node's ``names`` (human override, else WordNet's, else null), ``wordnet`` names and ``overridden`` flags,
  the ``score``, ``undo`` depth and whether images (``data``) and queries (``model``) are available;
- ``GET /api/nodes/N``: node N's members, name, WordNet's name, merge height, parent, children, WordNet's
  ``candidates`` (name, synset, gloss) and, for a leaf, what ``/api/labels`` says;
- ``PUT /api/nodes/N/name`` with ``{"name": "..."}``: renames (saved at once); ``DELETE /api/nodes/N/name``:
  back to WordNet's name; ``POST /api/undo``: undoes the last rename. Each answers
  ``{"node", "name", "overridden", "score", "undo"}``;
- ``GET /api/score``: the explanatory score against the human reference (null without one);
- ``GET /api/labels/I``: label I's near misses (most frequent first), a few images of it from ``--data`` and its
  walk to the root; ``GET /api/explain/I``: the explanation of a prediction of label I;
- ``GET /api/images/J``: image J of ``--data`` as PNG;
- ``POST /api/query``: an image file (``Content-Type: image/...`` or ``application/octet-stream``, at most
  ``max_upload`` bytes) or ``{"data_index": J}``: the prediction, its near misses with probabilities, the
  explanation (the text ``xai-jax nma explain`` prints) and the ``path`` of nodes from its leaf to the root.

Safe by default: loopback only unless told, requests for another host refused, names checked (length and
characters) and only ever stored as JSON strings, static files served from a fixed list, uploads size- and
pixel-limited and decoded by :func:`xai_jax.data.sources.decode_image`, nothing written outside the result folder.
"""

from __future__ import annotations

import dataclasses
import errno
import http.server
import importlib.resources
import io
import json
import os
import re
import socket
import threading
import urllib.parse
from typing import Callable

import numpy as np

from xai_jax.errors import XaiJaxError
from xai_jax.methods.nma.result import NMAResult, cluster_id

#: the longest name a concept may be given
NAME_MAX = 64
#: a name: a letter or digit first, then letters, digits, spaces and - ' . , & ( )
NAME_PATTERN = re.compile(r"[^\W_](?:[^\W_]|[ '\-.,&()])*")
#: the largest upload accepted by default (bytes), and the most pixels its header may declare
MAX_UPLOAD = 8 << 20
MAX_PIXELS = 40_000_000
#: how much of an oversized body is read (and dropped) before the refusal, so that the client gets it
DRAIN_MAX = 4 << 20
#: the largest JSON body (renames, data queries)
MAX_JSON = 4096
#: what ``GET /api/labels/I`` lists
IMAGES_PER_LABEL = 6
NEAR_MISSES_PER_LABEL = 5
#: members listed by ``GET /api/nodes/N`` (the count is always given)
MEMBERS_LISTED = 500
#: the page's files, by URL path: only these are ever served
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8")}
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class ApiError(XaiJaxError):
    """A request the API refuses: its HTTP status and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_name(name) -> str:
    """A concept name as given by a person, checked: runs of blanks become one space; 1 to :data:`NAME_MAX`
    characters of :data:`NAME_PATTERN`. Raises :class:`ApiError` (400) otherwise."""
    if not isinstance(name, str):
        raise ApiError(400, f"a name must be a string, not {type(name).__name__}")
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ApiError(400, "a name must not be empty")
    if len(cleaned) > NAME_MAX:
        raise ApiError(400, f"a name has at most {NAME_MAX} characters; this one has {len(cleaned)}")
    if not NAME_PATTERN.fullmatch(cleaned):
        bad = next((c for c in cleaned if not NAME_PATTERN.fullmatch("a" + c)), cleaned[0])
        raise ApiError(400, f"a name starts with a letter or digit and holds only letters, digits, spaces and "
                            f"- ' . , & ( ); not {bad!r}")
    return cleaned


def _source_labels(source) -> np.ndarray:
    """Every label of a data source, without decoding its images where the source keeps them."""
    from xai_jax.data.base import Subset
    if isinstance(source, Subset):
        return _source_labels(source.source)[source.indices]
    if getattr(source, "labels", None) is not None:
        return np.asarray(source.labels)
    return np.concatenate([source.read(np.arange(i, min(i + 256, len(source))))[1]
                           for i in range(0, len(source), 256)])


def _png(image: np.ndarray) -> bytes:
    from PIL import Image
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Explorer:
    """One NMA result folder, served: everything the page shows, and renames saved into the folder.

    Args:
      directory: the output folder of ``xai-jax nma fit``.
      human: the reference concepts of the explanatory score (``None``: no score).
      match: how concepts are matched against ``human`` (``"name"`` or ``"members"``).
      reference: how the reference is called (``"wordnet"``, a file name), as ``notes.score`` keeps it.
      classifier: a :class:`~xai_jax.methods.nma.query.Classifier` for queries (``None``: no queries).
      source: labelled images (a :class:`~xai_jax.data.base.Source` of the result's labels) to show and pick.
      max_upload: the largest image upload, in bytes.
    """

    def __init__(self, directory, *, human=None, match: str | None = None, reference: str | None = None,
                 classifier=None, source=None, max_upload: int = MAX_UPLOAD):
        from xai_jax.readers import read_json
        self.directory = os.path.abspath(os.fspath(directory))
        self.result = NMAResult.load(self.directory)
        self.notes = dict(read_json(os.path.join(self.directory, "nma.json"), "near-miss analysis result file")
                          .get("notes") or {})
        self.human, self.match, self.reference = human, match, reference
        self.classifier, self.source, self.max_upload = classifier, source, max_upload
        c = self.result.num_classes
        if source is not None and len(source.class_names) != c:
            raise XaiJaxError(f"--data has {len(source.class_names)} labels but the result has {c}")
        self.members = self.result.members()
        self.parents = np.full(2 * c - 1, -1, np.int64)
        for i, (a, b) in enumerate(self.result.linkage[:, :2].astype(int)):
            self.parents[[a, b]] = c + i
        # Cluster ids once: the overrides are keyed by them (their total length grows with the tree's depth).
        self.keys = [cluster_id(m) for m in self.members[c:]]
        self.node_of = {key: c + i for i, key in enumerate(self.keys)}
        self.undo_stack: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._query_lock = threading.Lock()
        self._labels = None
        self._synsets = None
        self._score = self._compute_score(self.result)

    # --- reading ---------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self.result.num_classes

    def _node_index(self, node) -> int:
        try:
            index = int(node)
        except (TypeError, ValueError):
            raise ApiError(404, f"no node {node!r}") from None
        if not 0 <= index < 2 * self.num_classes - 1:
            raise ApiError(404, f"no node {index}; nodes are 0 to {2 * self.num_classes - 2}")
        return index

    def _label_index(self, label) -> int:
        index = self._node_index(label)
        if index >= self.num_classes:
            raise ApiError(404, f"node {index} is not a label; labels are 0 to {self.num_classes - 1}")
        return index

    def _compute_score(self, result: NMAResult) -> dict | None:
        if self.human is None:
            return None
        return result.score_note(self.human, self.match, self.reference)

    def tree(self) -> dict:
        """The whole dendrogram, compactly: what the page draws (``GET /api/tree``)."""
        r = self.result
        return {"labels": list(r.class_names), "children": r.linkage[:, :2].astype(int).tolist(),
                "heights": r.linkage[:, 2].astype(float).tolist(),
                "sizes": r.linkage[:, 3].astype(int).tolist(),
                "names": [r.overrides.get(k, r.names.get(k)) for k in self.keys],
                "wordnet": [r.names.get(k) for k in self.keys],
                "overridden": [k in r.overrides for k in self.keys],
                "counts": r.counts.astype(int).tolist(),
                "score": self._score, "undo": len(self.undo_stack),
                "data": self.source is not None, "data_size": 0 if self.source is None else len(self.source),
                "model": None if self.classifier is None else self.classifier.spec.name,
                "result": self.directory, "config": dataclasses.asdict(r.config)}

    def path(self, node: int) -> list[int]:
        """The nodes from ``node`` up to the root, both included."""
        out = [int(node)]
        while self.parents[out[-1]] >= 0:
            out.append(int(self.parents[out[-1]]))
        return out

    def _synset_objects(self):
        if self._synsets is None:
            from xai_jax.naming.wordnet import synset
            self._synsets = [synset(s) for s in self.result.synsets]
        return self._synsets

    def candidates(self, members) -> list[dict]:
        """WordNet's names for a set of labels, with glosses (none when the result has no synsets)."""
        if self.result.synsets is None:
            return []
        from xai_jax.naming.hierarchy import candidate_names
        synsets = self._synset_objects()
        try:
            return candidate_names([synsets[m] for m in sorted(members)])
        except XaiJaxError:  # labels without a common hypernym: nothing to offer
            return []

    def node(self, node) -> dict:
        """A node's details (``GET /api/nodes/N``)."""
        index = self._node_index(node)
        r, c = self.result, self.num_classes
        members = sorted(self.members[index])
        out = {"node": index, "leaf": index < c, "size": len(members),
               "members": [{"index": m, "name": r.class_names[m]} for m in members[:MEMBERS_LISTED]],
               "parent": int(self.parents[index]), "path": self.path(index),
               "candidates": self.candidates(members)}
        if index < c:
            out.update(name=r.class_names[index], wordnet=None, overridden=False, height=0.0, children=[],
                       label=self.label(index))
        else:
            row, key = r.linkage[index - c], self.keys[index - c]
            out.update(name=r.overrides.get(key, r.names.get(key)), wordnet=r.names.get(key),
                       overridden=key in r.overrides,
                       height=float(row[2]), children=row[:2].astype(int).tolist())
        return out

    def labels_of_data(self) -> np.ndarray:
        if self._labels is None:
            self._labels = _source_labels(self.source)
        return self._labels

    def label(self, label) -> dict:
        """A label's near misses (by how often they occurred), images of it, and its walk (``GET /api/labels/I``)."""
        index = self._label_index(label)
        r = self.result
        events, p = np.asarray(r.events[index], np.float64), np.asarray(r.p[index], np.float64)
        order = [int(j) for j in np.lexsort((-p, -events)) if j != index and events[j] > 0]
        near = [{"index": j, "name": r.class_names[j], "events": int(events[j]), "p": float(p[j])}
                for j in order[:NEAR_MISSES_PER_LABEL]]
        images = ([] if self.source is None else
                  np.flatnonzero(self.labels_of_data() == index)[:IMAGES_PER_LABEL].astype(int).tolist())
        return {"index": index, "name": r.class_names[index], "counted": int(r.counts[index]),
                "near_misses": near, "images": images, "path": self.path(index)}

    def explain(self, label) -> dict:
        """The explanation of a prediction of a label (``GET /api/explain/I``), as ``nma explain --label``."""
        index = self._label_index(label)
        return {"index": index, "name": self.result.class_names[index],
                "explanation": self.result.explain(index).text(), "path": self.path(index)}

    def score(self) -> dict | None:
        return self._score

    def _data_image(self, data_index):
        if self.source is None:
            raise ApiError(409, "no images: start the explorer with --data SPEC")
        try:
            index = int(data_index)
        except (TypeError, ValueError):
            raise ApiError(400, f"an image index is an integer, not {data_index!r}") from None
        if not 0 <= index < len(self.source):
            raise ApiError(404, f"no image {index}; --data holds {len(self.source)} (0 to {len(self.source) - 1})")
        images, labels = self.source.read(np.asarray([index]))
        return index, images[0], int(labels[0])

    def image_png(self, data_index) -> bytes:
        """Image ``data_index`` of ``--data`` as PNG bytes (``GET /api/images/J``)."""
        return _png(self._data_image(data_index)[1])

    # --- queries ---------------------------------------------------------------------------------------------

    def _need_model(self) -> None:
        if self.classifier is None:
            raise ApiError(409, "no model: start the explorer with --model NAME --weights PATH (or on a result "
                                "fitted from a model)")

    def _answer(self, image: np.ndarray) -> dict:
        from xai_jax.methods.nma.query import answer
        self._need_model()
        with self._query_lock:
            probs = self.classifier.probabilities(image)
        out = answer(self.result, probs)
        out["path"] = self.path(out["label"])
        return out

    def query_upload(self, data: bytes) -> dict:
        """Classifies and explains an uploaded image file (``POST /api/query`` with the file as the body)."""
        from xai_jax.data.sources import decode_image
        self._need_model()
        if len(data) > self.max_upload:
            raise ApiError(413, f"the upload has {len(data):,} bytes; at most {self.max_upload:,} are accepted")
        try:
            image = decode_image(data, self.classifier.spec, max_pixels=MAX_PIXELS)
        except XaiJaxError as err:
            raise ApiError(400, str(err)) from None
        return self._answer(image)

    def query_data(self, data_index) -> dict:
        """Classifies and explains image ``data_index`` of ``--data`` (``POST /api/query {"data_index": J}``)."""
        self._need_model()
        index, image, true_label = self._data_image(data_index)
        out = self._answer(image)
        out.update(data_index=index, true_label=true_label, true_name=self.result.class_names[true_label])
        return out

    # --- writing ---------------------------------------------------------------------------------------------

    def _commit(self, key: str, name: str | None, remember: bool) -> dict:
        """Sets (or, with ``None``, removes) the override of cluster ``key`` and saves the result's JSON."""
        previous = self.result.overrides.get(key)
        overrides = dict(self.result.overrides)
        if name is None:
            overrides.pop(key, None)
        else:
            overrides[key] = name
        updated = dataclasses.replace(self.result, overrides=overrides)
        score = self._compute_score(updated)
        notes = dict(self.notes)
        if score is not None:
            notes["score"] = score
        updated.rewrite_summary(self.directory, notes)  # raises before anything changes here
        self.result, self.notes, self._score = updated, notes, score
        if remember:
            self.undo_stack.append((key, previous))
        return self._named(key)

    def _named(self, key: str) -> dict:
        r = self.result
        return {"node": self.node_of[key], "name": r.overrides.get(key, r.names.get(key)), "wordnet": r.names.get(key),
                "overridden": key in self.result.overrides, "score": self._score, "undo": len(self.undo_stack)}

    def _internal_key(self, node) -> str:
        index = self._node_index(node)
        if index < self.num_classes:
            raise ApiError(400, f"node {index} is the label {self.result.class_names[index]!r}; only concepts "
                                f"(internal nodes) are named")
        return cluster_id(self.members[index])

    def rename(self, node, name) -> dict:
        """Names a concept (``PUT /api/nodes/N/name``); saved into ``overrides`` at once."""
        key, name = self._internal_key(node), check_name(name)
        with self._lock:
            if self.result.overrides.get(key) == name:
                return self._named(key)
            return self._commit(key, name, remember=True)

    def restore(self, node) -> dict:
        """Gives a concept back WordNet's name (``DELETE /api/nodes/N/name``)."""
        key = self._internal_key(node)
        with self._lock:
            if key not in self.result.overrides:
                return self._named(key)
            return self._commit(key, None, remember=True)

    def undo(self) -> dict:
        """Undoes the last rename or restore of this session (``POST /api/undo``)."""
        with self._lock:
            if not self.undo_stack:
                raise ApiError(409, "nothing to undo")
            key, previous = self.undo_stack[-1]
            out = self._commit(key, previous, remember=False)
            self.undo_stack.pop()
            out["undo"] = len(self.undo_stack)
            return out


# --- HTTP ------------------------------------------------------------------------------------------------------

_ROUTES: list[tuple[str, re.Pattern, str]] = [
    ("GET", re.compile(r"/api/tree"), "tree"),
    ("GET", re.compile(r"/api/score"), "score"),
    ("GET", re.compile(r"/api/nodes/(\d+)"), "node"),
    ("PUT", re.compile(r"/api/nodes/(\d+)/name"), "rename"),
    ("DELETE", re.compile(r"/api/nodes/(\d+)/name"), "restore"),
    ("POST", re.compile(r"/api/undo"), "undo"),
    ("GET", re.compile(r"/api/labels/(\d+)"), "label"),
    ("GET", re.compile(r"/api/explain/(\d+)"), "explain"),
    ("GET", re.compile(r"/api/images/(\d+)"), "image"),
    ("POST", re.compile(r"/api/query"), "query"),
]


def _static(name: str) -> bytes:
    return importlib.resources.files("xai_jax.methods.nma").joinpath("static").joinpath(name).read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "xai-jax-explorer"
    protocol_version = "HTTP/1.1"
    server: "ExplorerServer"

    def log_message(self, format, *args):  # noqa: A002 (the standard library's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self):
        self._handle("GET")

    def do_PUT(self):
        self._handle("PUT")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' blob: data:; "
                                                    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value) -> None:
        self._send(status, json.dumps(value, allow_nan=False).encode(), "application/json; charset=utf-8")

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise ApiError(411, "a request body needs its Content-Length")
        if int(length) > limit:
            # Read (a bounded part of) what was sent before answering: closing a socket with unread data makes
            # the kernel reset the connection, and the client may lose the answer.
            self.rfile.read(min(int(length), limit + DRAIN_MAX))
            self.close_connection = True
            raise ApiError(413, f"the request body has {int(length):,} bytes; at most {limit:,} are accepted")
        return self.rfile.read(int(length))

    def _json_body(self) -> dict:
        if self.headers.get_content_type() != "application/json":
            raise ApiError(415, "send JSON (Content-Type: application/json)")
        try:
            value = json.loads(self._body(MAX_JSON))
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise ApiError(400, "the body must be a JSON object")
        return value

    def _host_allowed(self) -> bool:
        host = self.headers.get("Host")
        if host is None or self.server.any_host:
            return True
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.lower() in self.server.hosts

    def _handle(self, method: str) -> None:
        explorer = self.server.explorer
        try:
            if not self._host_allowed():
                raise ApiError(403, f"requests for host {self.headers.get('Host')!r} are refused")
            path = urllib.parse.urlsplit(self.path).path
            if method == "GET" and path in STATIC:
                name, content_type = STATIC[path]
                return self._send(200, _static(name), content_type)
            for route_method, pattern, action in _ROUTES:
                match = pattern.fullmatch(path)
                if match and route_method == method:
                    return self._route(explorer, action, *match.groups())
            if any(pattern.fullmatch(path) for _, pattern, _ in _ROUTES):
                raise ApiError(405, f"{method} is not allowed on {path}")
            raise ApiError(404, f"nothing at {path}")
        except ApiError as err:
            self._json(err.status, {"error": " ".join(str(err).split())})
        except XaiJaxError as err:
            self._json(400, {"error": " ".join(str(err).split())})
        except Exception as err:  # a bug: one line for the page, the traceback on the terminal
            self.log_error("%s %s failed: %r", method, self.path, err)
            self._json(500, {"error": f"internal error: {type(err).__name__}"})

    def _route(self, explorer: Explorer, action: str, *groups: str) -> None:
        if action == "image":
            return self._send(200, explorer.image_png(groups[0]), "image/png")
        if action == "rename":
            return self._json(200, explorer.rename(groups[0], self._json_body().get("name")))
        if action == "query":
            kind = self.headers.get_content_type()
            if kind == "application/json":
                body = self._json_body()
                if "data_index" not in body:
                    raise ApiError(400, 'a JSON query names an image of --data: {"data_index": J}')
                return self._json(200, explorer.query_data(body["data_index"]))
            if not (kind.startswith("image/") or kind == "application/octet-stream"):
                raise ApiError(415, "send an image file (Content-Type: image/... or application/octet-stream) "
                                    'or {"data_index": J} as JSON')
            return self._json(200, explorer.query_upload(self._body(explorer.max_upload)))
        handlers: dict[str, Callable] = {"tree": explorer.tree, "score": explorer.score, "node": explorer.node,
                                         "restore": explorer.restore, "undo": explorer.undo,
                                         "label": explorer.label, "explain": explorer.explain}
        return self._json(200, handlers[action](*groups))


class ExplorerServer(http.server.ThreadingHTTPServer):
    """The HTTP server of one :class:`Explorer` (one thread per request)."""

    daemon_threads = True
    allow_reuse_port = False

    def __init__(self, explorer: Explorer, host: str, port: int, verbose: bool = False):
        self.explorer, self.verbose = explorer, verbose
        self.any_host = host in ("0.0.0.0", "::", "")
        self.hosts = {*LOOPBACK, host.lower(), f"[{host.lower()}]"}
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        return f"http://{shown}:{port}/"


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 8765,
                verbose: bool = False) -> ExplorerServer:
    """The explorer's server, bound and listening (``port=0``: a free port); call ``serve_forever()`` on it.

    Raises:
      XaiJaxError: one line where the port is in use or the address cannot be bound.
    """
    try:
        return (_ExplorerServer6 if ":" in host else ExplorerServer)(explorer, host, port, verbose)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise XaiJaxError(f"port {port} on {host} is in use; stop what holds it or pass another --port "
                              f"(--port 0 picks a free one)") from None
        raise XaiJaxError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


class _ExplorerServer6(ExplorerServer):
    address_family = socket.AF_INET6
