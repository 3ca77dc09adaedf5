"""Which neighbour a caption names: the words, their order, the target labels."""
from __future__ import annotations

import torch

from dense3d.models.losses.mention import (IGNORE, mention_words, mentioned_classes, named_relation, relation_labels,
                                         target_labels, target_word_spans)

NAMES = ["chair", "table", "side_table", "garbagebin", "door"]
WORDS = mention_words(NAMES, {"garbagebin": ["trash can"]})


def test_mention_words_spell_underscores_as_spaces_and_take_aliases():
    assert "side table" in WORDS[2] and "side_table" in WORDS[2]
    assert "trash can" in WORDS[3] and "garbagebin" in WORDS[3]
    assert WORDS[0] == ["chair"]


def test_mentioned_classes_in_order_without_the_subject():
    cap = "this is a brown chair. it is between the white door and the black table. the chair is in the corner."
    assert mentioned_classes(cap, WORDS, own=0) == [4, 1]
    assert mentioned_classes(cap, WORDS, own=1) == [0, 4, 0]  # a table describing chairs
    # a class named twice counts twice: "between the table and the table"
    assert mentioned_classes("a chair between the red table and the blue table.", WORDS, own=0) == [1, 1]


def test_target_word_spans_are_the_named_targets_with_the_word_before():
    cap = "This is a brown chair. It is between the white door and the black side table, by two chairs."
    spans = target_word_spans(cap, WORDS, own=0)
    assert [cap[a:b] for a, b in spans] == ["white door", "black side table"]  # the chairs are its own class
    cap = "Table near the gray trash cans."
    assert [cap[a:b] for a, b in target_word_spans(cap, WORDS, own=4)] == ["Table", "gray trash cans"]  # none before
    assert target_word_spans("a brown chair.", WORDS, own=0) == []
    cap = "This is a chair. Tables are near it, door behind."  # no word before across punctuation
    assert [cap[a:b] for a, b in target_word_spans(cap, WORDS, own=0)] == ["Tables", "door"]


def test_mentioned_classes_whole_words_plurals_aliases_and_longer_names():
    assert mentioned_classes("an armchair by the doorway", WORDS, own=-1) == []
    assert mentioned_classes("two chairs and Doors", WORDS, own=-1) == [0, 4]
    assert mentioned_classes("next to the trash can.", WORDS, own=0) == [3]
    assert mentioned_classes("the side table next to the table", WORDS, own=0) == [2, 1]  # not "table" twice


def test_target_labels_name_the_nearest_neighbour_of_each_named_class():
    # one room: chair 0, table 1, door 2, table 3, chair 4; region 0's neighbours nearest first: 3, 2, 1, 4
    labels = torch.tensor([[0, 1, 4, 1, 0]])
    index = torch.tensor([[[3, 2, 1, 4], [0, 2, 3, 4], [0, 1, 3, 4], [0, 1, 2, 4], [0, 1, 2, 3]]])
    valid = torch.ones(1, 5, 4, dtype=torch.bool)
    valid[0, 4, 2:] = False  # region 4 has two real neighbours: 0 and 1
    caps = [["the chair between the table and the door.",  # table 3 (slot 0), door 2 (slot 1)
             "this is a table. it is next to the trash can.",  # no neighbour is a trash can
             "the door between the table and the table.",  # two tables: the nearer, then the other
             None,  # no caption, no label
             "a chair next to the chair, by the door."]]  # own class left out; the door is not real here
    out = target_labels(index, valid, labels, caps, WORDS, num_targets=2)
    assert out.shape == (1, 5, 2) and out.dtype == torch.long
    assert out[0, 0].tolist() == [0, 1]
    assert out[0, 1].tolist() == [IGNORE, 4]  # no trash can among the neighbours; no second class: none (k)
    assert out[0, 2].tolist() == [1, 2]
    assert out[0, 3].tolist() == [IGNORE, IGNORE]
    assert out[0, 4].tolist() == [IGNORE, 4]
    none = target_labels(index, valid, labels, [["it is here."] * 5], WORDS, num_targets=1)
    assert none[0, :, 0].tolist() == [4] * 5  # no class named: "no first target"


RELATIONS = [["next to", "beside", "near"], ["in front of", "ahead of"], ["behind"], ["left of"], ["right of"], ["between"]]
CAR_WORDS = mention_words(["car", "traffic_cone", "pedestrian"])


def test_named_relation_is_the_first_phrase_before_a_named_region():
    cases = {
        "right of the orange traffic cone, a gray car is parked behind the ego car, far away.": 4,
        "a gray car parked behind the ego car, far away, to the right of the orange traffic cone.": 4,
        "a red car parked in front of the ego car, ahead of the pedestrian in black.": 1,  # synonym, colour after
        "a car between the red car and the blue car, next to a cone.": 5,  # the earliest phrase wins
        "a car beside a traffic cone.": 0,
        "a blue car moving behind the ego car, nearby.": 6,  # the ego car is no region: no relation stated
        "a car near the ego car, behind the white car": 2,
        "a car behind the big dark green pedestrian": 6,  # three words between article and name: not read as a target
        "a car left of something.": 6,
    }
    for caption, want in cases.items():
        assert named_relation(caption, RELATIONS, CAR_WORDS) == want, caption
    # a longer phrase wins over one inside it, whatever the order they are listed in
    assert named_relation("a car to the left of the cone", [["left of"], ["to the left of"]], mention_words(["cone"])) == 1


def test_relation_labels_ignore_regions_without_a_caption():
    got = relation_labels([["a car behind the red car.", None], ["a car.", "a car ahead of a pedestrian"]],
                          RELATIONS, CAR_WORDS)
    assert got.tolist() == [[2, IGNORE], [6, 1]]
