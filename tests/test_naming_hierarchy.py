"""Label -> synset tables, cluster names, the induced WordNet hierarchy and the explanatory score, on real
WordNet 3.0 and the real ImageNet class list."""

from __future__ import annotations

import itertools
import json
import math
import random
import time

import numpy as np
import pytest

from conftest import shared_path
from xai_jax.errors import XaiJaxError
from xai_jax.naming import hierarchy as H
from xai_jax.naming import wordnet as W

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]
CIFAR100_COARSE = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2"]
# The 41 ImageNet labels of the paper's figures (section 5.1), by group.
PAPER_41 = {
    "vehicles": "n04552348 n02690373 n04266014 n03770679 n03977966 n03095699 n03344393 n04483307 n02981792 "
                "n03594945 n03670208 n04285008",
    "animals": "n02481823 n02480855 n02497673 n02493793 n02124075 n02123394 n02123045 n02110958 n02108089 n02104029 "
               "n02094258 n02002556 n02007558 n01860187 n02018207",
    "utensils": "n04596742 n03400231 n03063689 n04398044 n03133878 n02939185",
    "plants": "n07714990 n07714571 n07742313 n07716358 n07715103 n07749582 n07753113 n07747607",
}


@pytest.fixture(scope="module")
def wn():
    return W.load_wordnet(shared_path("nltk_data"))


@pytest.fixture(scope="module")
def cifar10(wn):
    return H.label_synsets(CIFAR10, "cifar10", wordnet=wn)


@pytest.fixture(scope="module")
def cifar100_names():
    return list(H.packaged_table("cifar100"))


@pytest.fixture(scope="module")
def cifar100(wn, cifar100_names):
    return H.label_synsets(cifar100_names, "cifar100", wordnet=wn)


@pytest.fixture(scope="module")
def imagenet_wnids():
    return shared_path("imagenet", "imagenet_synsets.txt").read_text().split()


def named(concepts, class_names):
    return [(c.name, sorted(class_names[i] for i in c.members)) for c in concepts]


def brute_force_hierarchy(synsets):
    """The definition, one lowest_common_hypernym call per pair."""
    nodes = {W.lowest_common_hypernym(synsets)}
    nodes |= {W.lowest_common_hypernym([a, b]) for a, b in itertools.combinations(synsets, 2)}
    return {H.Concept(W.concept_name(node), frozenset(i for i, s in enumerate(synsets) if node in W._ancestors(s)))
            for node in nodes}


# ------------------------------------------------------------------------------------------------
# Tables


def test_packaged_tables_resolve_in_label_order(wn):
    tables = {dataset: H.packaged_table(dataset) for dataset in ("cifar10", "cifar100", "mnist", "fashion_mnist")}
    assert list(tables["cifar10"]) == CIFAR10
    assert list(tables["mnist"]) == [str(d) for d in range(10)]
    assert list(tables["fashion_mnist"]) == FASHION_MNIST
    fine = list(tables["cifar100"])
    assert len(fine) == 100 and fine == sorted(fine)  # the standard fine-label index order is alphabetical
    assert fine[:10] == ["apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
                         "bottle"]
    assert fine[-3:] == ["wolf", "woman", "worm"]
    for dataset, table in tables.items():
        synsets = H.label_synsets(list(table), dataset, wordnet=wn)
        assert [s.name() for s in synsets] == list(table.values()), dataset
        assert all(s.pos() == "n" for s in synsets)
        assert len(set(synsets)) == len(synsets), f"{dataset}: two classes share a synset"


def test_packaged_table_is_a_fresh_copy():
    H.packaged_table("cifar10")["cat"] = "dog.n.01"
    assert H.packaged_table("cifar10")["cat"] == "cat.n.01"


def test_cifar10_synsets_are_the_meant_senses(cifar10):
    meant = {"airplane": "aircraft", "automobile": "motor vehicle", "bird": "feathers", "cat": "feline",
             "deer": "antlers", "dog": "Canis", "frog": "amphibians", "horse": "hoofed", "ship": "vessel",
             "truck": "automotive vehicle"}
    for name, s in zip(CIFAR10, cifar10):
        assert meant[name] in s.definition(), (name, s.definition())


def test_ambiguous_cifar100_and_other_labels_are_the_meant_senses(wn, cifar100_names, cifar100):
    by_name = dict(zip(cifar100_names, cifar100))
    under = {  # label -> a hypernym its synset must have: the animal, not the computer mouse, and so on
        "mouse": "rodent.n.01", "plain": "land.n.04", "ray": "fish.n.01", "seal": "pinniped_mammal.n.01",
        "tank": "military_vehicle.n.01", "palm_tree": "tree.n.01", "maple_tree": "tree.n.01",
        "pine_tree": "tree.n.01", "willow_tree": "tree.n.01", "oak_tree": "tree.n.01", "bear": "carnivore.n.01",
        "whale": "cetacean.n.01", "dolphin": "cetacean.n.01", "shrew": "insectivore.n.01",
        "skunk": "musteline_mammal.n.01", "crab": "crustacean.n.01", "lobster": "crustacean.n.01",
        "caterpillar": "larva.n.01", "tiger": "big_cat.n.01", "leopard": "big_cat.n.01", "boy": "male.n.02",
        "girl": "female.n.02", "baby": "child.n.02", "castle": "fortification.n.01", "bridge": "structure.n.01",
        "plate": "flatware.n.01", "bowl": "vessel.n.03", "can": "container.n.01", "keyboard": "device.n.01",
        "television": "electronic_equipment.n.01", "trout": "fish.n.01", "mushroom": "vegetable.n.01",
        "sweet_pepper": "vegetable.n.01", "apple": "edible_fruit.n.01", "cloud": "atmospheric_phenomenon.n.01",
        "forest": "land.n.04", "sea": "body_of_water.n.01", "rocket": "vehicle.n.01", "train": "conveyance.n.03",
        "lamp": "furniture.n.01", "beaver": "rodent.n.01", "otter": "carnivore.n.01", "raccoon": "carnivore.n.01",
        "possum": "marsupial.n.01", "turtle": "reptile.n.01",
    }
    for label, hypernym in under.items():
        assert W.synset(hypernym, wn) in W._ancestors(by_name[label]), (label, hypernym)
    digits = H.label_synsets(range(10), "mnist", wordnet=wn)  # MNIST's class names may be the digits as ints
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for digit, word, s in zip(range(10), words, digits):
        assert s.hypernyms() == [W.synset("digit.n.01", wn)] and word in s.lemma_names(), (digit, s)
        assert str(digit) in s.lemma_names()
    clothes = H.label_synsets(FASHION_MNIST, "fashion_mnist", wordnet=wn)
    assert [H.cluster_name([s]) for s in clothes] == ["jersey", "trouser", "pullover", "dress", "coat", "sandal",
                                                      "shirt", "gym shoe", "bag", "boot"]
    assert "T-shirt" in clothes[0].lemma_names() and "sneaker" in clothes[7].lemma_names()
    assert "handbag" in clothes[8].lemma_names()
    assert H.cluster_name(clothes[:5] + clothes[6:7]) == "clothing"
    assert H.cluster_name([clothes[5], clothes[7], clothes[9]]) == "footwear"


def test_cifar100_superclasses_cover_every_fine_label_once(cifar100_names):
    groups = H.cifar100_superclasses(cifar100_names)
    assert list(groups) == CIFAR100_COARSE
    assert all(len(members) == 5 for members in groups.values())
    assert sorted(i for members in groups.values() for i in members) == list(range(100))
    assert [cifar100_names[i] for i in groups["aquatic_mammals"]] == ["beaver", "dolphin", "otter", "seal", "whale"]
    assert [cifar100_names[i] for i in groups["fish"]] == ["aquarium_fish", "flatfish", "ray", "shark", "trout"]
    assert [cifar100_names[i] for i in groups["vehicles_2"]] == ["lawn_mower", "rocket", "streetcar", "tank",
                                                                  "tractor"]
    # Any order and any subset: indices follow the given order; empty superclasses are left out.
    subset = ["Whale", "apple", "aquarium fish", "beaver"]
    assert H.cifar100_superclasses(subset) == {"aquatic_mammals": [0, 3], "fish": [2], "fruit_and_vegetables": [1]}


def test_lookup_ignores_case_blanks_and_underscores_and_takes_user_tables(wn, tmp_path):
    shoes = H.label_synsets(["ankle_boot", "SNEAKER", "t-shirt/top", "  Ankle   Boot ", b"Bag"], "fashion_mnist",
                            wordnet=wn)
    assert [s.name() for s in shoes] == ["boot.n.01", "gym_shoe.n.01", "jersey.n.03", "boot.n.01", "bag.n.04"]
    table = {"Tench": "n01440764", "house cat": "cat.n.01"}  # wnids and synset names may be mixed
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    for source in (table, path, str(path)):
        assert [s.name() for s in H.label_synsets(["tench", "house_cat"], table=source, wordnet=wn)] == [
            "tench.n.01", "cat.n.01"]
    # A table wins over the dataset's packaged one.
    assert H.label_synsets(["cat"], "cifar10", table={"cat": "big_cat.n.01"}, wordnet=wn)[0].name() == "big_cat.n.01"


def test_imagenet_wnids_resolve(wn, imagenet_wnids):
    start = time.perf_counter()
    synsets = H.label_synsets(imagenet_wnids, "imagenet", wordnet=wn)
    print(f"label_synsets, 1,000 wnids: {time.perf_counter() - start:.3f} s")
    assert len(synsets) == 1000 and len(set(synsets)) == 1000
    assert [W.wnid_of(s) for s in synsets] == imagenet_wnids
    assert synsets[0].name() == "tench.n.01"
    assert H.label_synsets(imagenet_wnids[:3], wordnet=wn) == synsets[:3]  # wnids need no dataset


# ------------------------------------------------------------------------------------------------
# Names and hierarchies


def test_cluster_names_of_known_groups(wn, cifar10, cifar100_names, cifar100):
    s = dict(zip(CIFAR10, cifar10))
    assert H.cluster_name([s["cat"], s["dog"]]) == "carnivore"
    assert H.cluster_name([s["automobile"], s["truck"]]) == "motor vehicle"
    assert H.cluster_name([s["airplane"], s["ship"]]) == "craft"
    assert H.cluster_name([s["airplane"], s["ship"], s["truck"]]) == "vehicle"
    assert H.cluster_name([s["deer"], s["horse"]]) == "ungulate"
    assert H.cluster_name([s["bird"], s["frog"], s["cat"]]) == "vertebrate"
    assert H.cluster_name([s["cat"], s["ship"]]) == "whole"
    assert H.cluster_name([s["cat"]]) == "cat"
    assert H.cluster_name([W.synset("hot_dog.n.01", wn)]) == "hotdog"  # the first lemma, not the synset name
    groups = H.cifar100_superclasses(cifar100_names)
    names = {coarse: H.cluster_name([cifar100[i] for i in members]) for coarse, members in groups.items()}
    assert names == {
        "aquatic_mammals": "placental", "fish": "fish", "flowers": "vascular plant", "food_containers": "artifact",
        "fruit_and_vegetables": "produce", "household_electrical_devices": "instrumentality",
        "household_furniture": "furniture", "insects": "animal", "large_carnivores": "carnivore",
        "large_man-made_outdoor_things": "artifact", "large_natural_outdoor_scenes": "physical entity",
        "large_omnivores_and_herbivores": "mammal", "medium_mammals": "mammal",
        "non-insect_invertebrates": "invertebrate", "people": "person", "reptiles": "reptile",
        "small_mammals": "placental", "trees": "tree", "vehicles_1": "conveyance", "vehicles_2": "instrumentality"}


def test_cifar10_induced_hierarchy(cifar10):
    hierarchy = H.wordnet_hierarchy(cifar10)
    assert named(hierarchy, CIFAR10) == [
        ("whole", sorted(CIFAR10)),  # the root: animals (living things) and vehicles (artifacts) part here
        ("vertebrate", ["bird", "cat", "deer", "dog", "frog", "horse"]),
        ("placental", ["cat", "deer", "dog", "horse"]),
        ("vehicle", ["airplane", "automobile", "ship", "truck"]),
        ("carnivore", ["cat", "dog"]),
        ("craft", ["airplane", "ship"]),
        ("motor vehicle", ["automobile", "truck"]),
        ("ungulate", ["deer", "horse"]),
    ]
    assert set(hierarchy) == brute_force_hierarchy(cifar10)
    assert [c.name for c in H.concept_path(hierarchy, CIFAR10.index("cat"))] == [
        "carnivore", "placental", "vertebrate", "whole"]
    assert [c.name for c in H.concept_path(hierarchy, CIFAR10.index("ship"))] == ["craft", "vehicle", "whole"]
    assert H.concept_path(hierarchy, 10) == []


def test_hierarchy_of_one_label_and_of_labels_under_one_another(wn):
    dog = W.synset("dog.n.01", wn)
    assert H.wordnet_hierarchy([dog]) == [H.Concept("dog", frozenset({0}))]
    # A label that is a hypernym of another is a branching node itself; repeated synsets share everything.
    canine, wolf = W.synset("canine.n.02", wn), W.synset("wolf.n.01", wn)
    assert H.wordnet_hierarchy([dog, canine, wolf, dog]) == [
        H.Concept("canine", frozenset({0, 1, 2, 3})), H.Concept("dog", frozenset({0, 3}))]


def test_hierarchy_matches_the_pairwise_definition_on_cifar100(cifar100_names, cifar100):
    start = time.perf_counter()
    hierarchy = H.wordnet_hierarchy(cifar100)
    fast = time.perf_counter() - start
    start = time.perf_counter()
    reference = brute_force_hierarchy(cifar100)
    print(f"CIFAR-100 hierarchy: {fast * 1e3:.1f} ms, 4,950 lowest_common_hypernym calls: "
          f"{time.perf_counter() - start:.2f} s")
    assert set(hierarchy) == reference and len(hierarchy) == len(reference) == 55
    order = [(-len(c.members), c.name) for c in hierarchy]
    assert order == sorted(order)
    assert hierarchy[0].members == frozenset(range(100))
    assert ("produce", ["apple", "mushroom", "orange", "pear", "sweet_pepper"]) in named(hierarchy, cifar100_names)
    assert ("fish", ["aquarium_fish", "flatfish", "ray", "shark", "trout"]) in named(hierarchy, cifar100_names)


def test_hierarchy_of_the_papers_41_imagenet_labels(wn):
    wnids = " ".join(PAPER_41.values()).split()
    assert len(wnids) == 41
    synsets = H.label_synsets(wnids, "imagenet", wordnet=wn)
    start = time.perf_counter()
    hierarchy = H.wordnet_hierarchy(synsets)
    print(f"41-label hierarchy: {(time.perf_counter() - start) * 1e3:.1f} ms")
    assert set(hierarchy) == brute_force_hierarchy(synsets)
    groups = {c.name: c.members for c in hierarchy}
    index = {wnid: i for i, wnid in enumerate(wnids)}
    members = lambda text: frozenset(index[w] for w in text.split())  # noqa: E731
    assert groups["physical entity"] == frozenset(range(41))  # the root
    assert groups["vehicle"] == members(PAPER_41["vehicles"])
    assert groups["cooking utensil"] == members(PAPER_41["utensils"])
    assert groups["produce"] == members(PAPER_41["plants"])
    assert groups["vertebrate"] == members(PAPER_41["animals"])
    assert groups["domestic cat"] == members("n02124075 n02123394 n02123045")  # Egyptian, Persian, tabby
    assert groups["dog"] == members("n02110958 n02108089 n02104029 n02094258")  # pug, boxer, kuvasz, Norwich
    assert groups["primate"] == members("n02481823 n02480855 n02497673 n02493793")
    assert groups["aquatic bird"] == members("n02002556 n02007558 n01860187 n02018207")
    # Several parents make it a DAG: cars are wheeled vehicles, which WordNet also files under container,
    # the lowest common hypernym of a car and a pot.
    assert groups["container"] == members("n03063689 n04398044 n02939185 n03594945 n03670208 n03770679 "
                                          "n03977966 n04285008")
    assert len(hierarchy) == 30


def test_hierarchy_of_all_1000_imagenet_labels_takes_seconds(wn, imagenet_wnids):
    synsets = H.label_synsets(imagenet_wnids, "imagenet", wordnet=wn)
    start = time.perf_counter()
    hierarchy = H.wordnet_hierarchy(synsets)
    elapsed = time.perf_counter() - start
    print(f"ImageNet-1k hierarchy: {elapsed:.2f} s, {len(hierarchy)} concepts")
    assert elapsed < 10.0
    assert len(hierarchy) == 395 and len(set(hierarchy)) == 395
    assert hierarchy[0] == H.Concept("entity", frozenset(range(1000)))
    # Spot-check the pairwise rule on random pairs against lowest_common_hypernym.
    concepts = set(hierarchy)
    ancestors = [W._ancestors(s) for s in synsets]
    for a, b in random.Random(0).sample(list(itertools.combinations(range(1000), 2)), 200):
        node = W.lowest_common_hypernym([synsets[a], synsets[b]])
        members = frozenset(i for i, above in enumerate(ancestors) if node in above)
        assert H.Concept(W.concept_name(node), members) in concepts
    some = [synsets[i] for i in sorted(random.Random(1).sample(range(1000), 60))]
    assert set(H.wordnet_hierarchy(some)) == brute_force_hierarchy(some)
    groups = {c.name: c.members for c in hierarchy}
    assert len(groups["dog"]) == 118 and len(groups["domestic cat"]) == 5


def test_grouping_hierarchy(cifar100_names):
    groups = H.cifar100_superclasses(cifar100_names)
    hierarchy = H.grouping_hierarchy(groups, 100)
    assert len(hierarchy) == 21 and hierarchy[0] == H.Concept("root", frozenset(range(100)))
    assert H.Concept("fish", frozenset(groups["fish"])) in hierarchy
    assert [c.name for c in H.concept_path(hierarchy, cifar100_names.index("seal"))] == ["aquatic_mammals", "root"]
    assert H.grouping_hierarchy({"a": np.array([2, 0])}, 3) == [
        H.Concept("root", frozenset({0, 1, 2})), H.Concept("a", frozenset({0, 2}))]


# ------------------------------------------------------------------------------------------------
# Explanatory score


def test_score_of_a_hierarchy_against_itself_is_one(cifar10, cifar100_names, cifar100):
    # CIFAR-100's cloud and sea meet every other label at the root (physical entity): no score.
    unscored = [cifar100_names.index("cloud"), cifar100_names.index("sea")]
    for synsets, nan_labels in ((cifar10, []), (cifar100, unscored)):
        human = H.wordnet_hierarchy(synsets)
        for match in H.MATCHES:
            phi, score = H.explanatory_score(human, human, len(synsets), match=match)
            assert score == 1.0 and phi.dtype == np.float64
            assert np.flatnonzero(np.isnan(phi)).tolist() == nan_labels
            assert np.all(np.delete(phi, nan_labels) == 1.0)


def test_score_of_the_papers_apple_and_orange_example():
    # Labels apple, orange, grape, carrot, hammer. Human: apple-fruit-food-entity (and alike); leaves and the
    # root never count.
    apple, orange, grape, carrot, hammer = range(5)
    C = lambda name, *members: H.Concept(name, frozenset(members))  # noqa: E731
    human = [C("entity", 0, 1, 2, 3, 4), C("food", apple, orange, grape, carrot), C("fruit", apple, orange, grape)]
    human += [C(name, label) for label, name in enumerate(["apple", "orange", "grape", "carrot", "hammer"])]
    # The model clusters apples with oranges ('fruit'), carrot with hammer (named 'entity'), grape with nothing.
    machine = [C("entity", 0, 1, 2, 3, 4), C("fruit", apple, orange), C("entity", carrot, hammer),
               C("apple", apple), C("grape", grape)]
    phi, score = H.explanatory_score(human, machine, 5)
    np.testing.assert_array_equal(phi[:4], [0.5, 0.5, 0.0, 0.0])  # apple-fruit-entity: 1 of (fruit, food)
    assert math.isnan(phi[hammer])  # nothing between hammer and the root in the human hierarchy
    assert score == 0.25
    # Clustering apples and oranges with a vegetable too earns 'food': apple and orange score 1 by name,
    # but not by members (the human food concept also holds grape).
    machine.append(C("food", apple, orange, carrot))
    phi, score = H.explanatory_score(human, machine, 5)
    np.testing.assert_array_equal(phi[:4], [1.0, 1.0, 0.0, 1.0])
    assert score == 0.75
    phi, score = H.explanatory_score(human, machine, 5, match="members")
    np.testing.assert_array_equal(phi[:4], [0.0, 0.0, 0.0, 0.0])
    assert score == 0.0


def test_score_of_a_machine_hierarchy_named_by_wordnet(cifar10):
    human = H.wordnet_hierarchy(cifar10)
    clusters = [["cat", "dog"], ["automobile", "truck"], ["cat", "deer", "dog", "horse"],
                ["airplane", "bird", "frog", "ship"], CIFAR10]
    machine = [H.Concept(H.cluster_name([cifar10[CIFAR10.index(n)] for n in cluster]),
                         frozenset(CIFAR10.index(n) for n in cluster)) for cluster in clusters]
    assert [c.name for c in machine] == ["carnivore", "motor vehicle", "placental", "whole", "whole"]
    phi, score = H.explanatory_score(human, machine, 10)
    expected = {"airplane": 0, "automobile": 1 / 2, "bird": 0, "cat": 2 / 3, "deer": 1 / 3, "dog": 2 / 3,
                "frog": 0, "horse": 1 / 3, "ship": 0, "truck": 1 / 2}
    np.testing.assert_allclose(phi, [expected[n] for n in CIFAR10], rtol=0, atol=1e-15)
    assert score == pytest.approx(0.3, abs=1e-15)


def test_score_by_members_against_cifar100_superclasses(cifar100_names, cifar100):
    groups = H.cifar100_superclasses(cifar100_names)
    human = H.grouping_hierarchy(groups, 100)
    phi, score = H.explanatory_score(human, H.wordnet_hierarchy(cifar100), 100, match="members")
    # WordNet has exactly five superclasses as concepts: fish, produce, person, reptile, tree.
    exact = ["fish", "fruit_and_vegetables", "people", "reptiles", "trees"]
    expected = np.zeros(100)
    for coarse in exact:
        expected[groups[coarse]] = 1.0
    np.testing.assert_array_equal(phi, expected)
    assert score == 0.25
    # By name only fish matches: the other superclass names are not WordNet's.
    phi, score = H.explanatory_score(human, H.wordnet_hierarchy(cifar100), 100)
    assert np.flatnonzero(phi).tolist() == groups["fish"] and score == 0.05
    # Splitting one superclass costs its five labels.
    machine = [c for c in human if c.name != "trees"] + [H.Concept("x", frozenset(groups["trees"][:2]))]
    phi, score = H.explanatory_score(human, machine, 100, match="members")
    assert np.all(phi[groups["trees"]] == 0.0) and score == 0.95


def test_score_without_any_inner_human_concept_is_nan():
    flat = [H.Concept("digit", frozenset(range(10)))]  # MNIST: every digit is a digit, nothing between
    phi, score = H.explanatory_score(flat, flat, 10)
    assert np.isnan(phi).all() and math.isnan(score)
    phi, score = H.explanatory_score([H.Concept("x", frozenset({0}))], [], 1)
    assert np.isnan(phi).all() and math.isnan(score)


# ------------------------------------------------------------------------------------------------
# Errors


def one_line_error(pattern, call, *args, **kwargs):
    with pytest.raises(XaiJaxError, match=pattern) as error:
        call(*args, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_label_synset_errors(wn, tmp_path):
    message = one_line_error("no synset for class 'unicorn' in the packaged cifar10 table", H.label_synsets,
                             ["cat", "unicorn"], "cifar10", wordnet=wn)
    assert "table=" in message
    message = one_line_error("no WordNet synsets for class names such as 'cat'", H.label_synsets, ["cat"],
                             wordnet=wn)
    assert "dataset=" in message and "table=" in message
    one_line_error("unknown dataset 'cifar1000'", H.label_synsets, ["cat"], "cifar1000", wordnet=wn)
    one_line_error("unknown dataset 'svhn'", H.label_synsets, ["cat"], "svhn", table={"cat": "cat.n.01"}, wordnet=wn)
    one_line_error("unknown dataset", H.packaged_table, "svhn")
    one_line_error("imagenet has no packaged table", H.packaged_table, "imagenet")
    one_line_error("ImageNet class 'tench' is not a noun wnid", H.label_synsets, ["tench"], "imagenet", wordnet=wn)
    one_line_error("unknown wnid 'n99999999'", H.label_synsets, ["n99999999"], wordnet=wn)
    one_line_error("needs at least one class name", H.label_synsets, [], "cifar10", wordnet=wn)
    one_line_error("class 'run' in the given table: run.v.01 is not a noun synset", H.label_synsets, ["run"],
                   table={"run": "run.v.01"}, wordnet=wn)
    one_line_error("class 'cat' in the given table: unknown WordNet synset 'cat.n.99'", H.label_synsets, ["cat"],
                   table={"cat": "cat.n.99"}, wordnet=wn)
    one_line_error("names one class twice", H.label_synsets, ["cat"], table={"Cat": "cat.n.01", "cat": "dog.n.01"},
                   wordnet=wn)
    missing = tmp_path / "missing.json"
    one_line_error(f"synset table not found: {missing}", H.label_synsets, ["cat"], table=missing, wordnet=wn)
    broken = tmp_path / "broken.json"
    broken.write_text('{"cat": "cat.n.01",\n')
    one_line_error(f"synset table {broken} is not valid JSON", H.label_synsets, ["cat"], table=broken, wordnet=wn)
    listed = tmp_path / "list.json"
    listed.write_text('["cat.n.01"]')
    one_line_error(f"synset table {listed} must hold an object at its top level, not a list", H.label_synsets, ["cat"], table=listed, wordnet=wn)
    one_line_error("must be a JSON object", H.label_synsets, ["cat"], table={"cat": 1}, wordnet=wn)


def test_hierarchy_and_score_errors(wn):
    one_line_error("at least one synset", H.wordnet_hierarchy, [])
    one_line_error("no common hypernym", H.wordnet_hierarchy, [W.synset("dog.n.01", wn), W.synset("run.v.01", wn)])
    one_line_error("group 'a': label 3 is not an index in \\[0, 3\\)", H.grouping_hierarchy, {"a": [0, 3]}, 3)
    one_line_error("group 'a': label -1", H.grouping_hierarchy, {"a": [-1]}, 3)
    one_line_error("group 'a': label 1.0", H.grouping_hierarchy, {"a": [1.0]}, 3)
    one_line_error("group 'a' has no labels", H.grouping_hierarchy, {"a": []}, 3)
    one_line_error("may not be named 'root'", H.grouping_hierarchy, {"root": [0]}, 3)
    one_line_error("num_labels must be a positive int", H.grouping_hierarchy, {"a": [0]}, 0)
    one_line_error("'cow' is not a CIFAR-100 fine label", H.cifar100_superclasses, ["apple", "cow"])
    one_line_error("class 'Apple' is given twice \\(labels 0 and 1\\)", H.cifar100_superclasses, ["apple", "Apple"])
    concepts = [H.Concept("a", frozenset({0, 1}))]
    one_line_error("unknown match 'synsets'", H.explanatory_score, concepts, concepts, 2, match="synsets")
    one_line_error("machine concept 'b': label 5 is not an index in \\[0, 3\\)", H.explanatory_score, concepts,
                   [H.Concept("b", frozenset({5}))], 3)
    one_line_error("num_labels must be a positive int", H.explanatory_score, concepts, concepts, 0)


def test_candidate_names_are_the_lowest_common_hypernym_then_its_hypernyms_with_glosses(cifar10, wn):
    vehicles = [cifar10[CIFAR10.index("automobile")], cifar10[CIFAR10.index("truck")]]
    offered = H.candidate_names(vehicles)
    assert offered[0] == {"name": "motor vehicle", "synset": "motor_vehicle.n.01",
                          "gloss": wn.synset("motor_vehicle.n.01").definition()}
    assert offered[0]["name"] == H.cluster_name(vehicles)  # the automatic name comes first
    assert offered[1]["name"] == "automotive vehicle"  # the other lemma of the same synset
    path = [s.name() for s in W.hypernym_path(wn.synset("motor_vehicle.n.01"))][::-1]
    synsets = list(dict.fromkeys(c["synset"] for c in offered))
    assert synsets == path[:len(synsets)] and len(offered) == 8  # then up its hypernyms, nearest first
    assert len({c["name"].lower() for c in offered}) == len(offered)
    assert [c["name"] for c in H.candidate_names(cifar10, limit=3)][0] == H.cluster_name(cifar10)
    assert H.candidate_names([cifar10[3]], limit=1) == [{"name": "cat", "synset": "cat.n.01",
                                                        "gloss": wn.synset("cat.n.01").definition()}]
