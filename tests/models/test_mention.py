"""Which neighbour a caption names: the words, their order, the pointer loss."""
from __future__ import annotations

import math

import torch

from dense3d.models.losses.mention import mention_words, mentioned_classes, pointer_loss

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


def test_mentioned_classes_whole_words_plurals_aliases_and_longer_names():
    assert mentioned_classes("an armchair by the doorway", WORDS, own=-1) == []
    assert mentioned_classes("two chairs and Doors", WORDS, own=-1) == [0, 4]
    assert mentioned_classes("next to the trash can.", WORDS, own=0) == [3]
    assert mentioned_classes("the side table next to the table", WORDS, own=0) == [2, 1]  # not "table" twice


def _logits(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_pointer_loss_is_the_cross_entropy_towards_the_named_neighbours():
    # one scene, regions: chair 0, table 1, door 2, table 3; region 0's neighbours 1, 2, 3 (k = 3), P = 2
    labels = torch.tensor([[0, 1, 4, 1]])
    index = torch.tensor([[[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]])
    valid = torch.ones(1, 4, 3, dtype=torch.bool)
    logits = torch.zeros(1, 4, 3, 2)
    logits[0, 0, :, 0] = _logits([2.0, 0.0, 1.0])  # pointer 1 of the chair
    logits[0, 0, :, 1] = _logits([0.0, 3.0, 0.0])  # pointer 2
    caps = [["the chair between the table and the door.", None, None, None]]
    loss, n = pointer_loss(logits, index, valid, labels, caps, WORDS)
    assert n == 2
    p1 = torch.tensor([2.0, 0.0, 1.0]).softmax(0)
    p2 = torch.tensor([0.0, 3.0, 0.0]).softmax(0)
    # pointer 1: both tables (neighbours 1 and 3) are right; pointer 2: the door (neighbour 2)
    expected = (-math.log(p1[0] + p1[2]) - math.log(p2[1])) / 2
    assert abs(loss.item() - expected) < 1e-5


def test_pointer_loss_skips_what_it_cannot_label_and_keeps_a_graph():
    labels = torch.tensor([[0, 1, 4]])
    index = torch.tensor([[[1, 2], [0, 2], [0, 1]]])
    valid = torch.tensor([[[True, True], [True, True], [False, False]]])
    logits = torch.zeros(1, 3, 2, 1, requires_grad=True)
    masked = logits.masked_fill(~valid.unsqueeze(-1), float("-inf"))
    caps = [["the chair next to the trash can.",  # no neighbour is a trash can
             "the table next to the chair and the door.",  # P = 1: only the chair counts
             "the door next to the table."]]  # region 2 has no real neighbour
    loss, n = pointer_loss(masked, index, valid, labels, caps, WORDS)
    assert n == 1 and abs(loss.item() - math.log(2)) < 1e-6
    loss, n = pointer_loss(masked, index, valid, labels, [[None, None, None]], WORDS)
    assert n == 0 and loss.item() == 0.0
    loss.backward()  # no terms: zero, but the graph is there
    assert logits.grad is not None and logits.grad.abs().sum() == 0
