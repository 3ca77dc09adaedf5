"""synthetic_annotations.json: one reader, one-line errors naming the file and field."""
from __future__ import annotations

import json

import pytest

from dense3d.data.synthetic.annotations import ANNOTATIONS_FILE, load_synthetic_annotations
from dense3d.errors import AnnotationError


def _write(tmp_path, text: str):
    (tmp_path / ANNOTATIONS_FILE).write_text(text)


def test_reads_a_set_and_checks_its_kind(tmp_path):
    _write(tmp_path, json.dumps({"kind": "indoor", "scenes": [{"scene_id": "s0", "split": "val", "objects": []}]}))
    assert load_synthetic_annotations(tmp_path)["scenes"][0]["scene_id"] == "s0"
    assert load_synthetic_annotations(tmp_path, "indoor")["kind"] == "indoor"
    with pytest.raises(AnnotationError, match=r"synthetic_annotations.json.*kind.*'outdoor'"):
        load_synthetic_annotations(tmp_path, "outdoor")


@pytest.mark.parametrize("text, field", [
    (None, "<file>"),                                                  # missing
    ('{"kind": "indoor", "scenes": [', "<file>"),                      # cut short
    ('["a list"]', "<root>"),
    ('{"kind": "lidar", "scenes": []}', "kind"),
    ('{"kind": "av", "scenes": {}}', "scenes"),
    ('{"kind": "av", "scenes": [{"scene_id": "a", "split": "train"}]}', r"scenes\[0\]"),  # no objects
    ('{"kind": "av", "scenes": [{"split": "train", "objects": []}]}', r"scenes\[0\]"),  # no scene_id
])
def test_bad_files_give_one_line_errors_naming_file_and_field(tmp_path, text, field):
    if text is not None:
        _write(tmp_path, text)
    with pytest.raises(AnnotationError, match=rf"synthetic_annotations.json.*{field}") as e:
        load_synthetic_annotations(tmp_path)
    assert "\n" not in str(e.value)


def test_every_reader_of_the_set_reports_a_malformed_file_in_one_line(tmp_path):
    from dense3d.data.synthetic import dataset_stats
    from dense3d.data.synthetic.facts import load_indoor_facts, load_outdoor_facts

    _write(tmp_path, '{"kind": "outdoor", "scenes": [')
    for read in (lambda: load_outdoor_facts(tmp_path, "val"), lambda: load_indoor_facts(tmp_path, "val"),
                 lambda: dataset_stats(tmp_path)):
        with pytest.raises(AnnotationError, match=r"synthetic_annotations.json.*<file>") as e:
            read()
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="outdor"):
        load_synthetic_annotations(tmp_path, "outdor")


def test_a_missing_file_says_the_command_that_writes_it(tmp_path):
    with pytest.raises(AnnotationError, match=r"convert synth --kind indoor`.*missing file"):
        load_synthetic_annotations(tmp_path, "indoor")
    with pytest.raises(AnnotationError, match=r"convert synth --kind outdoor\|indoor\|av\|joint`.*missing file"):
        load_synthetic_annotations(tmp_path)
