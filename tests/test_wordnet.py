"""WordNet 3.0 through nltk: finding it, installing it, and the synset helpers, checked against real facts."""

from __future__ import annotations

import filecmp
import itertools
import os
import pathlib
import re
import shutil
import socket
import stat
import time
import zipfile

import nltk
import pytest

from conftest import shared_path
from xai_jax.errors import XaiJaxError
from xai_jax.naming import wordnet as W

DEBIAN_READY = all((W.DEBIAN_WORDNET_DIR / name).is_file() for name in W.DEBIAN_FILES)
needs_debian_wordnet = pytest.mark.skipif(
    not DEBIAN_READY, reason=f"Debian's WordNet is not installed: apt-get install {' '.join(W.DEBIAN_PACKAGES)}")


@pytest.fixture(scope="module")
def nltk_data() -> pathlib.Path:
    return shared_path("nltk_data")


@pytest.fixture(scope="module")
def wn(nltk_data):
    return W.load_wordnet(nltk_data)


@pytest.fixture
def isolated_nltk_path(monkeypatch):
    """nltk's search path and NLTK_DATA restored afterwards, and readers loaded meanwhile forgotten (each
    holds about 100 MB)."""
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    monkeypatch.delenv("NLTK_DATA", raising=False)
    cached = set(W._READERS)
    yield
    for root in set(W._READERS) - cached:
        del W._READERS[root]


def names(synsets) -> list[str]:
    return [s.name() for s in synsets]


# ------------------------------------------------------------------------------------------------
# Loading


def test_noun_synsets_of_wordnet_30(wn):
    assert wn.get_version() == "3.0"
    assert sum(1 for _ in wn.all_synsets("n")) == 82_115


def test_load_is_cached_per_folder_and_reads_nltk_data_set_after_import(wn, nltk_data, isolated_nltk_path,
                                                                         monkeypatch):
    assert W.load_wordnet(nltk_data) is wn
    nltk.data.path[:] = [p for p in nltk.data.path if pathlib.Path(p).resolve() != nltk_data.resolve()]
    monkeypatch.setenv("NLTK_DATA", str(nltk_data))
    assert W.load_wordnet() is wn
    # nltk itself reads only under nltk.data.path: the folder is put first there.
    assert pathlib.Path(nltk.data.path[0]) == nltk_data.resolve()


def test_missing_wordnet_says_how_to_install(tmp_path, isolated_nltk_path):
    with pytest.raises(XaiJaxError) as error:
        W.load_wordnet(tmp_path)
    message = str(error.value)
    assert "xai-jax setup wordnet" in message and str(tmp_path) in message and "\n" not in message
    nltk.data.path[:] = [str(tmp_path / "nothing_here")]
    with pytest.raises(XaiJaxError, match="xai-jax setup wordnet"):
        W.load_wordnet()


@pytest.mark.skipif(not W._nltk_refuses_shared_folders(), reason="this nltk reads group-writable folders")
def test_group_writable_corpus_is_named_with_the_fix(nltk_data, tmp_path):
    corpus = W.corpus_dir(tmp_path)
    corpus.mkdir(parents=True)
    for source in W.corpus_dir(nltk_data).iterdir():
        (corpus / source.name).symlink_to(source)
    corpus.chmod(0o775)
    # The premise: nltk refuses it, with a message that only says "not found" (and a warning).
    with pytest.raises(LookupError), pytest.warns(RuntimeWarning, match="NLTK will not read"):
        nltk.data.find("corpora/wordnet", paths=[str(tmp_path)])
    with pytest.raises(XaiJaxError, match="group-writable") as error:
        W.load_wordnet(tmp_path)
    assert f"chmod -R go-w {corpus}" in str(error.value)
    assert W.unsafe_entry(corpus) == f"{corpus} is group-writable (mode 0775)"
    corpus.chmod(0o755)
    assert W.unsafe_entry(corpus) is None


# ------------------------------------------------------------------------------------------------
# Synsets


def test_imagenet_wnids_resolve_round_trip_and_name_like_imagenet(wn):
    wnids = shared_path("imagenet", "imagenet_synsets.txt").read_text().split()
    lemma_lines = shared_path("imagenet", "imagenet_synset_to_lemma.txt").read_text().splitlines()
    first_lemma = {wnid: lemmas.split(", ")[0] for wnid, lemmas in (line.split("\t", 1) for line in lemma_lines)}
    assert W.synset_from_wnid("n01440764", wn).name() == "tench.n.01"
    assert len(wnids) == 1000
    synsets = [W.synset_from_wnid(wnid, wn) for wnid in wnids]
    assert [W.wnid_of(s) for s in synsets] == wnids
    assert len(set(synsets)) == 1000
    assert [W.concept_name(s) for s in synsets] == [first_lemma[wnid] for wnid in wnids]


def test_bad_wnids_and_names_raise(wn):
    for wnid in ("x01440764", "n0144076", "n014407640", "", "n99999999", "n01440765"):
        with pytest.raises(XaiJaxError, match="wnid"):
            W.synset_from_wnid(wnid, wn)
    for name in ("dog.n.99", "nosuch.n.01", "dog"):
        with pytest.raises(XaiJaxError, match="unknown WordNet synset"):
            W.synset(name, wn)


def test_synset_names_and_wnids(wn):
    dog = W.synset("dog.n.01", wn)
    assert W.wnid_of(dog) == "n02084071"
    assert W.synset_from_wnid("n02084071", wn) == dog
    assert W.concept_name(W.synset_from_wnid("n01484850", wn)) == "great white shark"
    assert W.concept_name(W.synset("hot_dog.n.02", wn)) == "hotdog"  # the first lemma, not the name
    assert W.concept_name(W.synset("hot_dog.n.01", wn)) == "hotdog"


def test_lowest_common_hypernym(wn):
    s = lambda name: W.synset(name, wn)  # noqa: E731
    assert W.lowest_common_hypernym([s("dog.n.01"), s("cat.n.01")]).name() == "carnivore.n.01"
    assert s("dog.n.01").lowest_common_hypernyms(s("cat.n.01")) == [s("carnivore.n.01")]
    # car and truck meet at motor_vehicle; the airplane joins them at vehicle (below conveyance).
    assert W.lowest_common_hypernym([s("car.n.01"), s("truck.n.01")]).name() == "motor_vehicle.n.01"
    assert W.lowest_common_hypernym([s("car.n.01"), s("truck.n.01"), s("airplane.n.01")]).name() == "vehicle.n.01"
    assert W.lowest_common_hypernym([s("tench.n.01")]).name() == "tench.n.01"
    assert W.lowest_common_hypernym([s("dog.n.01"), s("canine.n.02")]).name() == "canine.n.02"


def test_lowest_common_hypernym_tie_rule_and_order_independence(wn):
    s = lambda name: W.synset(name, wn)  # noqa: E731
    hockey, soccer, chess = s("hockey_player.n.01"), s("soccer_player.n.01"), s("chess_player.n.01")
    # Both players are athletes and players, at equal depth: nltk returns both, sorted by name.
    assert names(hockey.lowest_common_hypernyms(soccer)) == ["athlete.n.01", "player.n.01"]
    assert W.lowest_common_hypernym([hockey, soccer]).name() == "athlete.n.01"
    # With a chess player, player.n.01 is common to all three, whatever the order; folding nltk's pairwise
    # answers would lose it in this order (athlete, then contestant).
    for order in itertools.permutations([hockey, soccer, chess]):
        assert W.lowest_common_hypernym(order).name() == "player.n.01"
    folded = hockey.lowest_common_hypernyms(soccer)[0].lowest_common_hypernyms(chess)
    assert names(folded) == ["contestant.n.01"]


def test_lowest_common_hypernym_errors(wn):
    with pytest.raises(XaiJaxError, match="at least one"):
        W.lowest_common_hypernym([])
    with pytest.raises(XaiJaxError, match="no common hypernym"):
        W.lowest_common_hypernym([W.synset("dog.n.01", wn), W.synset("run.v.01", wn)])


def test_hypernym_path(wn):
    dog = W.synset("dog.n.01", wn)
    path = W.hypernym_path(dog)
    assert names(path) == [
        "entity.n.01", "physical_entity.n.01", "object.n.01", "whole.n.02", "living_thing.n.01", "organism.n.01",
        "animal.n.01", "chordate.n.01", "vertebrate.n.01", "mammal.n.01", "placental.n.01", "carnivore.n.01",
        "canine.n.02", "dog.n.01"]
    assert len(path) == dog.max_depth() + 1 and path in dog.hypernym_paths()
    assert names(W.hypernym_path(dog, shortest=True)) == [
        "entity.n.01", "physical_entity.n.01", "object.n.01", "whole.n.02", "living_thing.n.01", "organism.n.01",
        "animal.n.01", "domestic_animal.n.01", "dog.n.01"]
    entity = W.synset("entity.n.01", wn)
    assert W.hypernym_path(entity) == [entity] == W.hypernym_path(entity, shortest=True)
    # Equally deep parents (player, athlete): the smaller name, as lowest_common_hypernym breaks ties.
    hockey = W.synset("hockey_player.n.01", wn)
    assert names(W.hypernym_path(hockey)[-3:]) == ["contestant.n.01", "athlete.n.01", "hockey_player.n.01"]
    assert names(W.hypernym_path(hockey, shortest=True)[-3:]) == ["contestant.n.01", "athlete.n.01",
                                                                   "hockey_player.n.01"]
    # An instance reaches the tree through its instance hypernym.
    assert names(W.hypernym_path(W.synset("einstein.n.01", wn))[-3:]) == [
        "scientist.n.01", "physicist.n.01", "einstein.n.01"]


def test_hypernym_path_does_not_depend_on_nltk_parent_order(wn, monkeypatch):
    # nltk keeps hypernyms in a set: their order follows the process's string-hash seed (dog.n.01 lists
    # canine first under PYTHONHASHSEED=1, domestic_animal first under 2). Reversing it changes nothing.
    dog, hockey = W.synset("dog.n.01", wn), W.synset("hockey_player.n.01", wn)
    before = [W.hypernym_path(dog), W.hypernym_path(hockey), W.hypernym_path(hockey, shortest=True)]
    hypernyms = type(dog).hypernyms
    monkeypatch.setattr(type(dog), "hypernyms", lambda self: hypernyms(self)[::-1])
    assert [W.hypernym_path(dog), W.hypernym_path(hockey), W.hypernym_path(hockey, shortest=True)] == before


# ------------------------------------------------------------------------------------------------
# Installing


def test_probe_of_an_unreachable_server_fails_fast():
    # A host that never answers costs the timeout; a failed name lookup or a refused port, no more than
    # the failure takes.
    start = time.monotonic()
    assert not W.host_reachable("192.0.2.1", 443, timeout=0.5)  # TEST-NET-1 (RFC 5737): never answers
    assert time.monotonic() - start < 1.5
    assert not W.host_reachable("nonexistent.invalid", 443, timeout=0.5)  # reserved TLD (RFC 2606)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        start = time.monotonic()
        assert not W.host_reachable("127.0.0.1", port, timeout=5.0)  # bound, not listening: refused at once
        assert time.monotonic() - start < 1.0
        server.listen()
        assert W.host_reachable("127.0.0.1", port, timeout=5.0)
    assert W.nltk_server() == ("raw.githubusercontent.com", 443)


def test_default_target_skips_read_only_folders(nltk_data, tmp_path, isolated_nltk_path):
    assert not os.stat(nltk_data).st_mode & stat.S_IWUSR
    nltk.data.path[:] = [str(nltk_data), str(tmp_path / "nltk_data")]
    assert W.default_target_dir() == tmp_path / "nltk_data"


def test_setup_finds_an_installed_wordnet_without_downloading(wn, nltk_data, monkeypatch):
    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("nothing to download"))
    assert W.setup_wordnet(nltk_data, quiet=True) == str(nltk_data.resolve())


def noun_lines_without_other_pos_offsets(corpus: pathlib.Path) -> list[str]:
    text = (corpus / "data.noun").read_text(encoding="utf-8")
    return re.sub(r"\d{8} [vasr] ", "OFFSET ", text).splitlines()


def no_temporary_folders_left(target: pathlib.Path) -> bool:
    return not [p for p in target.rglob(".wordnet*")]


@needs_debian_wordnet
def test_setup_falls_back_to_debian_when_nltk_downloader_fails(nltk_data, tmp_path, isolated_nltk_path,
                                                               monkeypatch):
    calls = []

    def download_failing(info_or_id=None, download_dir=None, quiet=False, raise_on_error=False,
                         print_error_to=None, extract=None):
        calls.append((info_or_id, pathlib.Path(download_dir)))
        return False  # what nltk returns when its server cannot be reached

    monkeypatch.setattr(W, "host_reachable", lambda *a, **k: True)
    monkeypatch.setattr(nltk, "download", download_failing)
    target = tmp_path / "nltk_data"
    start = time.monotonic()
    assert W.setup_wordnet(target, quiet=True, apt=False) == str(target)
    print(f"setup via Debian: {time.monotonic() - start:.1f} s")
    assert [c[0] for c in calls] == ["wordnet"] and calls[0][1].parent == target / "corpora"
    assert str(calls[0][1]) not in nltk.data.path

    corpus = W.corpus_dir(target)
    assert sorted(p.name for p in corpus.iterdir()) == sorted({*W.DEBIAN_FILES, "lexnames", "LICENSE"})
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in corpus.iterdir())
    assert stat.S_IMODE(corpus.stat().st_mode) == 0o755 and W.unsafe_entry(corpus) is None
    assert no_temporary_folders_left(target)
    shared = W.corpus_dir(nltk_data)
    assert filecmp.cmp(corpus / "lexnames", shared / "lexnames", shallow=False)
    # Debian rebuilt the database from the WordNet 3.0 sources: the noun index is Princeton's byte for
    # byte, and so is every noun synset line once pointers to verbs and adjectives (whose offsets moved)
    # are blanked out.
    for name in ("index.noun", "noun.exc", "cntlist.rev"):
        assert filecmp.cmp(corpus / name, shared / name, shallow=False), name
    assert noun_lines_without_other_pos_offsets(corpus) == noun_lines_without_other_pos_offsets(shared)
    assert not filecmp.cmp(corpus / "data.verb", shared / "data.verb", shallow=False)

    debian = W.load_wordnet(target)
    assert W.synset_from_wnid("n01440764", debian).name() == "tench.n.01"
    dog, cat = W.synset("dog.n.01", debian), W.synset("cat.n.01", debian)
    assert W.lowest_common_hypernym([dog, cat]).name() == "carnivore.n.01"
    assert W.wnid_of(dog) == "n02084071"


@pytest.mark.parametrize("network", ["server unreachable", "downloader raises"])
def test_setup_that_cannot_install_says_what_to_run(network, tmp_path, monkeypatch):
    def download_raising(*args, **kwargs):
        if network == "server unreachable":
            pytest.fail("the downloader must not be tried when the probe fails")
        raise OSError("network is unreachable")

    monkeypatch.setattr(W, "host_reachable", lambda *a, **k: network != "server unreachable")
    monkeypatch.setattr(nltk, "download", download_raising)
    target = tmp_path / "nltk_data"
    with pytest.raises(XaiJaxError) as error:
        W.setup_wordnet(target, quiet=True, debian_dir=tmp_path / "no_debian", apt=False)
    message = str(error.value)
    assert "apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index" in message
    assert "xai-jax setup wordnet" in message and "\n" not in message
    assert not W.corpus_dir(target).exists() and no_temporary_folders_left(target)


def test_setup_leaves_no_partial_or_unusable_corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "host_reachable", lambda *a, **k: False)
    fake_debian = tmp_path / "debian"
    fake_debian.mkdir()
    for name in W.DEBIAN_FILES:
        (fake_debian / name).write_text("")
    target = tmp_path / "nltk_data"

    copied = []
    real_copyfile = shutil.copyfile

    def copy_failing_halfway(source, destination):
        if len(copied) == 5:
            raise OSError(28, "No space left on device")
        copied.append(source)
        return real_copyfile(source, destination)

    monkeypatch.setattr(shutil, "copyfile", copy_failing_halfway)
    with pytest.raises(XaiJaxError, match="No space left"):
        W.setup_wordnet(target, quiet=True, debian_dir=fake_debian, apt=False)
    assert not W.corpus_dir(target).exists() and no_temporary_folders_left(target)

    # Copied whole but not a WordNet: it is published, fails to load, and is removed again.
    monkeypatch.setattr(shutil, "copyfile", real_copyfile)
    with pytest.raises(XaiJaxError, match="cannot read WordNet|not 3.0"):
        W.setup_wordnet(target, quiet=True, debian_dir=fake_debian, apt=False)
    assert not W.corpus_dir(target).exists() and no_temporary_folders_left(target)


def test_setup_installs_what_nltk_downloads(nltk_data, tmp_path, isolated_nltk_path, monkeypatch):
    # nltk's downloader leaves corpora/wordnet.zip (the package as its server has it): made here from the
    # shared corpus, so everything after the network is the real path.
    def download_zip(info_or_id=None, download_dir=None, quiet=False, raise_on_error=False, print_error_to=None,
                     extract=None):
        assert info_or_id == "wordnet" and extract is True
        archive = pathlib.Path(download_dir, "corpora", "wordnet.zip")
        archive.parent.mkdir(parents=True)
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for source in sorted(W.corpus_dir(nltk_data).iterdir()):
                zf.write(source, f"wordnet/{source.name}")
        return True

    monkeypatch.setattr(W, "host_reachable", lambda *a, **k: True)
    monkeypatch.setattr(nltk, "download", download_zip)
    target = tmp_path / "nltk_data"
    assert W.setup_wordnet(target, quiet=True, debian_dir=tmp_path / "no_debian", apt=False) == str(target)
    corpus = W.corpus_dir(target)
    assert sorted(p.name for p in corpus.iterdir()) == sorted(p.name for p in W.corpus_dir(nltk_data).iterdir())
    assert filecmp.cmp(corpus / "data.noun", W.corpus_dir(nltk_data) / "data.noun", shallow=False)
    assert W.unsafe_entry(corpus) is None and no_temporary_folders_left(target)
    assert W.synset_from_wnid("n01440764", W.load_wordnet(target)).name() == "tench.n.01"
