"""WordNet 3.0 through nltk: finding it, installing it, and the synset operations that naming needs.

Finding: ``load_wordnet`` looks in an explicit folder, else in the folders of ``NLTK_DATA`` (read at call
time, unlike nltk, which reads it once at import) and then ``nltk.data.path``, for ``corpora/wordnet``
(a folder, or ``corpora/wordnet.zip``). The folder it uses is put first on ``nltk.data.path``: nltk only
reads data under that path, and its reader looks up ``index.sense`` of "the" wordnet there too.

Installing: ``setup_wordnet`` tries nltk's downloader, after checking that its server answers within a few
seconds (nltk waits up to 120 s per socket read). Where the server is unreachable it copies Debian's
WordNet 3.0 (packages ``wordnet-base`` and ``wordnet-sense-index``, installed to ``/usr/share/wordnet``),
running ``apt-get install`` first when it may. Debian builds its database from the WordNet 3.0 sources
itself: the noun synsets, names and relations, and their offsets (the ImageNet wnids), are those of
Princeton's release, but two in three verb and one in two adjective offsets differ; it also lacks the
``lexnames`` file, which is written here from the WordNet 3.0 release. No PyPI package ships the
nltk-format data.

Synsets: small helpers to go from an ImageNet wnid or a name to a synset and back, to name a set of
synsets by their lowest common hypernym, and to walk from the root to a synset.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import pathlib
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
import warnings
import zipfile
from typing import Iterable

import nltk
from nltk.corpus.reader.wordnet import Synset, WordNetCorpusReader, WordNetError

from xai_jax.errors import XaiJaxError

SETUP_HINT = "install it with `xai-jax setup wordnet` (or set NLTK_DATA to a folder holding corpora/wordnet)"
WORDNET_VERSION = "3.0"
CORPUS = ("corpora", "wordnet")

DEBIAN_WORDNET_DIR = pathlib.Path("/usr/share/wordnet")
# wordnet-base has the database; index.sense, which nltk's reader opens when it starts, is only in
# wordnet-sense-index. --no-install-recommends: wordnet-base recommends the Tk browser.
DEBIAN_PACKAGES = ("wordnet-base", "wordnet-sense-index")
APT_INSTALL = ("apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES)
# What nltk's WordNetCorpusReader reads, less lexnames (written from LEXNAMES below).
DEBIAN_FILES = (
    "cntlist.rev", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb",
    "data.adj", "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)

# The ``lexnames`` file of the WordNet 3.0 release, byte for byte (two lines end in blanks there too).
# Debian leaves it out because its C library has the list compiled in; nltk reads it to name synsets'
# lexicographer files.
LEXNAMES = (
    "00\tadj.all\t3\n01\tadj.pert\t3 \n02\tadv.all\t4\n03\tnoun.Tops\t1  \n04\tnoun.act\t1\n"
    "05\tnoun.animal\t1\n06\tnoun.artifact\t1\n07\tnoun.attribute\t1\n08\tnoun.body\t1\n"
    "09\tnoun.cognition\t1\n10\tnoun.communication\t1\n11\tnoun.event\t1\n12\tnoun.feeling\t1\n"
    "13\tnoun.food\t1\n14\tnoun.group\t1\n15\tnoun.location\t1\n16\tnoun.motive\t1\n17\tnoun.object\t1\n"
    "18\tnoun.person\t1\n19\tnoun.phenomenon\t1\n20\tnoun.plant\t1\n21\tnoun.possession\t1\n"
    "22\tnoun.process\t1\n23\tnoun.quantity\t1\n24\tnoun.relation\t1\n25\tnoun.shape\t1\n"
    "26\tnoun.state\t1\n27\tnoun.substance\t1\n28\tnoun.time\t1\n29\tverb.body\t2\n30\tverb.change\t2\n"
    "31\tverb.cognition\t2\n32\tverb.communication\t2\n33\tverb.competition\t2\n34\tverb.consumption\t2\n"
    "35\tverb.contact\t2\n36\tverb.creation\t2\n37\tverb.emotion\t2\n38\tverb.motion\t2\n"
    "39\tverb.perception\t2\n40\tverb.possession\t2\n41\tverb.social\t2\n42\tverb.stative\t2\n"
    "43\tverb.weather\t2\n44\tadj.ppl\t3\n"
)

# How long setup waits for nltk's data server to accept a connection before taking the fallback.
PROBE_TIMEOUT_S = 5.0
# tench.n.01, the first ImageNet class: a WordNet 3.0 noun offset that any other version moves.
_PROBE_WNID, _PROBE_NAME = "n01440764", "tench.n.01"
_WNID = re.compile(r"([nvasr])(\d{8})")
# Warnings nltk gives while we load on purpose without them, or before we raise a clearer error.
_QUIET_WARNINGS = (
    r"The multilingual functions are not available",
    r"NLTK will not read",
)


# ---------------------------------------------------------------------------------------------------
# Finding and loading


def search_roots(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
    """The nltk data folders to look in for ``corpora/wordnet``, in order.

    Args:
      data_dir: an explicit nltk data folder (the one holding ``corpora/``); when given, the only one.

    Returns:
      ``[data_dir]``, or the folders of ``NLTK_DATA`` as it is now followed by ``nltk.data.path``,
      without repeats.
    """
    if data_dir is not None:
        return [pathlib.Path(data_dir).expanduser()]
    entries = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    entries += [p for p in nltk.data.path if isinstance(p, (str, os.PathLike))]
    roots: list[pathlib.Path] = []
    for entry in entries:
        root = pathlib.Path(entry).expanduser()
        if root not in roots:
            roots.append(root)
    return roots


def corpus_dir(root: str | os.PathLike) -> pathlib.Path:
    """``<root>/corpora/wordnet``: where nltk reads WordNet under a data folder."""
    return pathlib.Path(root).joinpath(*CORPUS)


def find_wordnet(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The first data folder holding ``corpora/wordnet`` (or ``corpora/wordnet.zip``).

    Args:
      data_dir: an explicit nltk data folder, or ``None`` to search ``NLTK_DATA`` and ``nltk.data.path``.

    Returns:
      The data folder (the parent of ``corpora``), absolute.

    Raises:
      XaiJaxError: when none holds WordNet.
    """
    roots = search_roots(data_dir)
    for root in roots:
        corpus = corpus_dir(root)
        if corpus.is_dir() or corpus.with_suffix(".zip").is_file():
            return root.resolve()
    where = f"under {roots[0]}" if data_dir is not None else f"in nltk's data path ({', '.join(map(str, roots))})"
    raise XaiJaxError(f"WordNet {WORDNET_VERSION} not found {where}; {SETUP_HINT}")


def load_wordnet(data_dir: str | os.PathLike | None = None) -> WordNetCorpusReader:
    """The nltk WordNet 3.0 reader, loaded once per data folder.

    Args:
      data_dir: an nltk data folder holding ``corpora/wordnet``; ``None`` searches ``NLTK_DATA`` (as set
        now) and ``nltk.data.path``.

    Returns:
      A ``WordNetCorpusReader`` (the object ``nltk.corpus.wordnet`` becomes), without multilingual data.

    Raises:
      XaiJaxError: WordNet is missing, refused by nltk for its permissions, unreadable, or not 3.0.
    """
    root = str(find_wordnet(data_dir))
    with _READERS_LOCK:
        if root not in _READERS:
            _READERS[root] = _read_wordnet(root)
        else:
            _put_first_on_nltk_path(root)
        return _READERS[root]


_READERS: dict[str, WordNetCorpusReader] = {}
_READERS_LOCK = threading.RLock()


def _read_wordnet(root: str) -> WordNetCorpusReader:
    _put_first_on_nltk_path(root)
    corpus = corpus_dir(root)
    problem = unsafe_entry(corpus) if _nltk_refuses_shared_folders() else None
    if problem:
        raise XaiJaxError(f"nltk refuses the WordNet in {corpus}: {problem}; run `chmod -R go-w {corpus}` "
                          f"(or `xai-jax setup wordnet` to make a private copy)")
    try:
        with _quiet_nltk():
            pointer = _find_corpus_pointer(root)
            reader = WordNetCorpusReader(pointer, None)
    except (LookupError, OSError, ValueError, AssertionError, IndexError, KeyError) as e:  # missing or corrupt
        # nltk's own messages run to many lines; keep the first one, which says what went wrong.
        first_line = next((line.strip() for line in str(e).splitlines() if re.search("[A-Za-z]", line)),
                          type(e).__name__)
        raise XaiJaxError(f"cannot read WordNet in {corpus}: {first_line}; reinstall it with "
                          f"`xai-jax setup wordnet`") from None
    version = reader.get_version()
    if version != WORDNET_VERSION:
        raise XaiJaxError(f"the WordNet in {corpus} is version {version}, not {WORDNET_VERSION} (ImageNet wnids "
                          f"are 3.0 offsets); {SETUP_HINT}")
    try:
        probe = synset_from_wnid(_PROBE_WNID, reader).name()
    except XaiJaxError:
        probe = "nothing"
    if probe != _PROBE_NAME:
        raise XaiJaxError(f"the WordNet in {corpus} is not Princeton's 3.0: {_PROBE_WNID} is {probe}, "
                          f"not {_PROBE_NAME}; {SETUP_HINT}")
    return reader


def _find_corpus_pointer(root: str):
    # A folder first, as nltk's own loader does; the downloader may leave only the zip.
    try:
        return nltk.data.find("corpora/wordnet", paths=[root])
    except LookupError:
        return nltk.data.find("corpora/wordnet.zip/wordnet/", paths=[root])


def _put_first_on_nltk_path(root: str) -> None:
    # nltk reads data only under nltk.data.path, and its WordNet reader opens the index.sense of the
    # first wordnet there while it starts: that must be this one.
    if root in nltk.data.path:
        nltk.data.path.remove(root)
    nltk.data.path.insert(0, root)


def _nltk_refuses_shared_folders() -> bool:
    # nltk >= 3.9.3 refuses data another account could have written (nltk.pathsec); older ones read it.
    pathsec = sys.modules.get("nltk.pathsec")
    if pathsec is None:
        with contextlib.suppress(ImportError):
            import nltk.pathsec as pathsec
    return os.name == "posix" and bool(getattr(pathsec, "ENFORCE", False))


def unsafe_entry(corpus: str | os.PathLike) -> str | None:
    """Why nltk would refuse a corpus folder, judged as nltk judges it: the data folder, ``corpora``, the
    corpus folder and every entry in it must be owned by this account or root and be neither group- nor
    world-writable.

    Args:
      corpus: ``<root>/corpora/wordnet`` (a folder or a zip).

    Returns:
      One phrase naming the first offending path and why, or ``None`` when nltk would read it.
    """
    corpus = pathlib.Path(corpus)
    if not corpus.exists():
        corpus = corpus.with_suffix(".zip")
    paths = [corpus.parent.parent, corpus.parent, corpus]
    if corpus.is_dir():
        paths += sorted(corpus.rglob("*"))
    for path in paths:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if st.st_uid not in (os.geteuid(), 0):
            return f"{path} is owned by uid {st.st_uid}, not by you or root"
        for bit, who in ((stat.S_IWOTH, "world"), (stat.S_IWGRP, "group")):
            if st.st_mode & bit and not stat.S_ISLNK(st.st_mode):
                return f"{path} is {who}-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


@contextlib.contextmanager
def _quiet_nltk():
    with warnings.catch_warnings():
        for message in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


# ---------------------------------------------------------------------------------------------------
# Installing


def setup_wordnet(target_dir: str | os.PathLike | None = None, quiet: bool = False, *,
                  debian_dir: str | os.PathLike = DEBIAN_WORDNET_DIR, apt: bool = True) -> str:
    """Installs WordNet 3.0 where nltk finds it: nltk's downloader, else Debian's copy.

    1. Nothing to do when WordNet already loads from ``target_dir`` (from anywhere nltk looks, when
       ``target_dir`` is None); that folder is returned.
    2. nltk's downloader, if its server accepts a connection within ``PROBE_TIMEOUT_S`` seconds (or a
       proxy is configured); downloaded into a private folder under ``target`` and moved into place.
    3. Otherwise Debian's WordNet 3.0 from ``debian_dir``; when it is missing and we are root with
       ``apt-get``, ``apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index`` first.
       The files are copied (nltk refuses to follow links out of its data path) with ``lexnames`` added.

    Each way fills a temporary folder next to the corpus and renames it into place, so a failure never
    leaves a partial corpus; a corpus that fails to load afterwards is removed.

    Args:
      target_dir: the nltk data folder to install into; default: the first writable, private entry of
        ``NLTK_DATA``/``nltk.data.path``, else ``~/nltk_data``.
      quiet: print nothing.
      debian_dir: where Debian installs WordNet (a parameter so tests can point elsewhere).
      apt: allow running ``apt-get install`` when Debian's WordNet is missing.

    Returns:
      The data folder, to put on ``NLTK_DATA`` if it is not on nltk's default path.

    Raises:
      XaiJaxError: no way worked; the message says what to run.
    """
    say = (lambda message: None) if quiet else (lambda message: print(message, flush=True))
    with contextlib.suppress(XaiJaxError):
        root = find_wordnet(target_dir)
        load_wordnet(root)
        say(f"WordNet {WORDNET_VERSION} is already installed in {corpus_dir(root)}")
        return str(root)
    target = pathlib.Path(target_dir).expanduser() if target_dir is not None else default_target_dir()
    target = target.resolve()
    _make_private_dir(corpus_dir(target).parent)

    source = _download_with_nltk(target, quiet, say)
    if source is None:
        source = _stage_debian_copy(target, pathlib.Path(debian_dir), apt, quiet, say)
    _publish(source, corpus_dir(target))
    try:
        load_wordnet(target)
    except XaiJaxError:
        _remove_tree(corpus_dir(target))  # whole but unusable: leave nothing nltk would trip on
        raise
    say(f"WordNet {WORDNET_VERSION} is ready in {corpus_dir(target)}; "
        f"if nltk does not find it, set NLTK_DATA={target}")
    return str(target)


def default_target_dir() -> pathlib.Path:
    """The first entry of ``NLTK_DATA``/``nltk.data.path`` that is (or can be made) a writable folder that
    nltk will read, else ``~/nltk_data``."""
    for root in search_roots():
        if _writable_private_dir(root):
            return root
    return pathlib.Path.home() / "nltk_data"


def _writable_private_dir(path: pathlib.Path) -> bool:
    existing = path if path.exists() else path.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return False
    st = existing.stat()
    # os.access says yes to root everywhere: a folder whose owner cannot write (mode 0555, like a shared
    # read-only data folder) is not a place to install into even so.
    owner_writes = st.st_uid != os.geteuid() or st.st_mode & stat.S_IWUSR
    private = st.st_uid in (os.geteuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return bool(owner_writes) and private


def _make_private_dir(path: pathlib.Path) -> None:
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as e:
        raise XaiJaxError(f"cannot create {path}: {e.strerror}; choose another folder with --target") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise XaiJaxError(f"cannot write to {path}; choose another folder with --target")
    problem = unsafe_entry(path / CORPUS[-1]) if _nltk_refuses_shared_folders() else None
    if problem:
        raise XaiJaxError(f"nltk would refuse WordNet installed under {path.parent}: {problem}; "
                          f"run `chmod go-w` on it or choose another folder with --target")


def nltk_server() -> tuple[str, int]:
    """Host and port of the data index nltk's downloader reads."""
    url = urllib.parse.urlsplit(nltk.downloader.Downloader.DEFAULT_URL)
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def host_reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds, name lookup included.

    The attempt runs on a daemon thread because a name lookup ignores socket timeouts.
    """
    done = threading.Event()
    connected: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                connected.append(True)
        except OSError:
            pass  # refused, unreachable, unknown name: all mean "no"
        finally:
            done.set()

    threading.Thread(target=attempt, daemon=True, name="xai-jax-probe").start()
    done.wait(timeout)
    return bool(connected)


def _download_with_nltk(target: pathlib.Path, quiet: bool, say) -> pathlib.Path | None:
    """Runs nltk's downloader into a private folder under ``target``; returns the finished corpus folder,
    or None when the server is unreachable or the download fails."""
    host, port = nltk_server()
    # Behind a proxy a direct connection says nothing: leave it to nltk (and its 120 s read timeout).
    proxied = "https" in urllib.request.getproxies()
    if not proxied and not host_reachable(host, port):
        say(f"nltk's data server {host} is unreachable; falling back to Debian's WordNet {WORDNET_VERSION}")
        return None
    say(f"downloading WordNet with nltk from {host}")
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".wordnet-download-", dir=corpus_dir(target).parent))
    options = {"quiet": quiet, "raise_on_error": False}
    parameters = inspect.signature(nltk.download).parameters
    if "extract" in parameters:
        options["extract"] = True
    if quiet and "print_error_to" in parameters:
        options["print_error_to"] = io.StringIO()
    try:
        try:
            ok = nltk.download("wordnet", download_dir=str(staging), **options)
        except (OSError, ValueError) as e:
            ok = False
            say(f"nltk's downloader failed: {e}")
        corpus = corpus_dir(staging)
        if ok and not corpus.is_dir() and corpus.with_suffix(".zip").is_file():
            ok = _extract_corpus_zip(corpus.with_suffix(".zip"), corpus.parent)
        if not ok or not (corpus / "data.noun").is_file():
            say(f"nltk's downloader did not install WordNet; falling back to Debian's WordNet {WORDNET_VERSION}")
            return None
        # Out of the staging folder before it is deleted: a sibling of the final corpus, same file system.
        finished = pathlib.Path(tempfile.mkdtemp(prefix=".wordnet-", dir=corpus_dir(target).parent))
        os.rename(corpus, finished / "wordnet")
        return finished / "wordnet"
    finally:
        _remove_tree(staging)
        with contextlib.suppress(ValueError):
            nltk.data.path.remove(str(staging))  # nltk's downloader authorises its download folder


def _extract_corpus_zip(archive: pathlib.Path, into: pathlib.Path) -> bool:
    """Unpacks the downloader's ``wordnet.zip`` (entries ``wordnet/...``) into ``into``; False for an
    archive that is broken or holds anything else."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                parts = pathlib.PurePosixPath(name).parts
                if not parts or parts[0] != "wordnet" or ".." in parts or name.startswith("/"):
                    return False
            zf.extractall(into)
    except (zipfile.BadZipFile, OSError):
        return False
    _make_readable(into / "wordnet")
    return True


def _stage_debian_copy(target: pathlib.Path, debian_dir: pathlib.Path, apt: bool, quiet: bool,
                       say) -> pathlib.Path:
    """Copies Debian's WordNet 3.0 (installing it first when allowed) into a temporary sibling of the final
    corpus folder and adds ``lexnames``; returns that folder."""
    missing = _missing_debian_files(debian_dir)
    if missing and apt and _may_run_apt():
        say(f"installing Debian's WordNet: {' '.join(APT_INSTALL)}")
        _apt_install(quiet)
        missing = _missing_debian_files(debian_dir)
    if missing:
        raise XaiJaxError(f"cannot install WordNet: nltk's downloader could not get it and {debian_dir} lacks "
                          f"{', '.join(missing)}; run `sudo {' '.join(APT_INSTALL)}`, then `xai-jax setup wordnet`")
    say(f"copying Debian's WordNet {WORDNET_VERSION} from {debian_dir}")
    staged = pathlib.Path(tempfile.mkdtemp(prefix=".wordnet-", dir=corpus_dir(target).parent)) / "wordnet"
    try:
        staged.mkdir()
        for name in DEBIAN_FILES:
            shutil.copyfile(debian_dir / name, staged / name)
        (staged / "lexnames").write_text(LEXNAMES, encoding="ascii")
        license_file = pathlib.Path("/usr/share/doc/wordnet-base/copyright")
        if license_file.is_file():
            shutil.copyfile(license_file, staged / "LICENSE")
        _make_readable(staged)
    except OSError as e:
        _remove_tree(staged.parent)
        raise XaiJaxError(f"cannot copy WordNet from {debian_dir}: {e}") from None
    return staged


def _missing_debian_files(debian_dir: pathlib.Path) -> list[str]:
    return [name for name in DEBIAN_FILES if not (debian_dir / name).is_file()]


def _may_run_apt() -> bool:
    return os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get") is not None


def _apt_install(quiet: bool) -> None:
    # A fresh machine may have no package lists yet: update once and retry when the install fails.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    output = subprocess.DEVNULL if quiet else None
    for command in (APT_INSTALL, ("apt-get", "update"), APT_INSTALL):
        try:
            result = subprocess.run(command, env=env, stdout=output, stderr=output, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return  # the caller finds the files still missing and says what to run
        if result.returncode == 0 and command == APT_INSTALL:
            return


def _make_readable(folder: pathlib.Path) -> None:
    # What nltk accepts: owned by us, readable by all, writable only by the owner.
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _publish(staged: pathlib.Path, final: pathlib.Path) -> None:
    """Renames a finished corpus folder into place; an existing (broken) one is moved aside first and then
    deleted, so the final path always holds a whole corpus or nothing."""
    _make_readable(staged)
    old = None
    if final.exists():
        old = pathlib.Path(tempfile.mkdtemp(prefix=".wordnet-old-", dir=final.parent)) / "wordnet"
        os.rename(final, old)
    os.rename(staged, final)
    _remove_tree(staged.parent)
    if old is not None:
        _remove_tree(old.parent)
    with _READERS_LOCK:
        _READERS.pop(str(final.parent.parent), None)


def _remove_tree(path: pathlib.Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Synsets


def _reader(wordnet: WordNetCorpusReader | None) -> WordNetCorpusReader:
    return load_wordnet() if wordnet is None else wordnet


def synset_from_wnid(wnid: str, wordnet: WordNetCorpusReader | None = None) -> Synset:
    """The synset of an ImageNet wnid: part of speech and WordNet 3.0 byte offset.

    Args:
      wnid: e.g. ``"n01440764"``.
      wordnet: a reader from :func:`load_wordnet`; default ``load_wordnet()``.

    Returns:
      The synset, e.g. ``tench.n.01``.

    Raises:
      XaiJaxError: a malformed wnid, or no synset at that offset.
    """
    match = _WNID.fullmatch(wnid.strip()) if isinstance(wnid, str) else None
    if match is None:
        raise XaiJaxError(f"malformed wnid {wnid!r}: expected a part of speech and 8 digits, e.g. n01440764")
    pos, offset = match.group(1), int(match.group(2))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No WordNet synset found")
        try:
            found = _reader(wordnet).synset_from_pos_and_offset(pos, offset)
        except WordNetError:
            found = None
    if found is None:
        raise XaiJaxError(f"unknown wnid {wnid!r}: no WordNet {WORDNET_VERSION} synset at that offset")
    return found


def wnid_of(synset: Synset) -> str:
    """The wnid of a synset: its part of speech and 8-digit offset, e.g. ``"n02084071"`` for dog.n.01."""
    return f"{synset.pos()}{synset.offset():08d}"


def synset(name: str, wordnet: WordNetCorpusReader | None = None) -> Synset:
    """A synset by its nltk name.

    Args:
      name: ``lemma.pos.nn``, e.g. ``"dog.n.01"``.
      wordnet: a reader from :func:`load_wordnet`; default ``load_wordnet()``.

    Raises:
      XaiJaxError: a malformed or unknown name.
    """
    try:
        return _reader(wordnet).synset(name)
    except (WordNetError, ValueError, AttributeError) as e:
        raise XaiJaxError(f"unknown WordNet synset {name!r}: {e}") from None


def _ancestors(synset: Synset) -> set[Synset]:
    # The synset itself and everything above it, through instance hypernyms too (as nltk's
    # common_hypernyms does).
    return {synset, *synset.closure(lambda s: s.hypernyms() + s.instance_hypernyms())}


def lowest_common_hypernym(synsets: Iterable[Synset]) -> Synset:
    """The deepest synset that is, or is a hypernym of, every given synset.

    "Deepest" is nltk's: the largest ``max_depth()``, the rule of ``Synset.lowest_common_hypernyms``. Ties
    go to the smallest synset name, which is ``lowest_common_hypernyms(...)[0]`` (nltk sorts by name), so
    for two synsets this is nltk's answer. For more, the common hypernyms of all of them are intersected
    at once rather than nltk's pairwise answers folded: a fold is order-dependent where a tie or multiple
    inheritance drops a shared ancestor (hockey_player and soccer_player fold to athlete, which loses
    player.n.01 that chess_player shares).

    Args:
      synsets: one or more synsets.

    Returns:
      The lowest common hypernym; a single synset is its own.

    Raises:
      XaiJaxError: no synsets, or no common hypernym (e.g. verbs of different trees, nouns and verbs).
    """
    synsets = list(synsets)
    if not synsets:
        raise XaiJaxError("lowest_common_hypernym needs at least one synset")
    common = _ancestors(synsets[0])
    for other in synsets[1:]:
        common &= _ancestors(other)
    if not common:
        names = ", ".join(s.name() for s in synsets)
        raise XaiJaxError(f"no common hypernym of {names}")
    return min(common, key=lambda s: (-s.max_depth(), s.name()))


def concept_name(synset: Synset) -> str:
    """A synset's name for people: its first lemma with spaces, e.g. ``"great white shark"``."""
    return synset.lemmas()[0].name().replace("_", " ")


def hypernym_path(synset: Synset, shortest: bool = False) -> list[Synset]:
    """The synsets from the root down to ``synset``, both included, chosen by a reproducible rule.

    nltk keeps a synset's hypernyms in a set, so the order of ``hypernyms()`` and of ``hypernym_paths()``
    changes from one Python process to the next (string hashing is salted): "the first path" is not a
    rule. By default each step up takes the deepest parent (largest ``max_depth()``, ties to the smallest
    name), which gives a longest path, ``max_depth() + 1`` synsets long, and follows the same depth and
    tie rule as :func:`lowest_common_hypernym` (dog.n.01 goes up through canine and carnivore, not
    domestic_animal; hockey_player.n.01 through athlete, its lowest common hypernym with soccer_player).
    ``shortest=True`` takes a shortest path instead, ties broken by the synset names from the root down.

    Args:
      synset: any synset.
      shortest: take a shortest path instead of the deepest.

    Returns:
      ``[root, ..., synset]``; ``[synset]`` for a root.
    """
    if shortest:
        return min(synset.hypernym_paths(), key=lambda path: (len(path), [s.name() for s in path]))
    path = [synset]
    while parents := path[-1].hypernyms() + path[-1].instance_hypernyms():
        path.append(min(parents, key=lambda s: (-s.max_depth(), s.name())))
    return path[::-1]
