from pathlib import Path

import numpy as np

from dense3d.engine.report import markdown_table, plot_curves, read_metrics_csv, write_report


def test_curves_and_report(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    lines = ["epoch,step,train/loss,val/CIDEr"]
    for s in range(20):
        lines.append(f"0,{s},{2.0 / (s + 1)},")
    lines.append("0,19,,0.42")
    csv_path.write_text("\n".join(lines) + "\n")
    series = read_metrics_csv(csv_path)
    assert len(series["train/loss"]) == 20 and series["val/CIDEr"] == [(19, 0.42)]
    png = plot_curves(series, tmp_path / "curves.png", title="demo")
    from PIL import Image

    img = np.asarray(Image.open(png).convert("L"))
    assert img.std() > 5
    table = markdown_table([{"metric": "CIDEr@0.5", "value": 0.4213}, {"metric": "BLEU-4@0.5", "value": 0.1}])
    assert "| CIDEr@0.5 | 0.421 |" in table
    rep = write_report(tmp_path / "report.md", "Run", [("Metrics", table)], [("curves", png)])
    text = rep.read_text()
    assert "## Metrics" in text and "![curves](curves.png)" in text


def test_markdown_table_cells_with_pipes_and_newlines_stay_in_their_cell():
    table = markdown_table([{"scene": "a", "caption": "a car | left\nof the bus"}])
    rows = table.strip().splitlines()
    assert len(rows) == 3, rows  # header, rule, one row
    assert rows[2] == "| a | a car \\| left of the bus |"


def test_report_links_resolve_after_the_tree_is_moved(tmp_path, monkeypatch):
    """Pictures inside and outside the report's folder are linked relative to it, so the links
    still resolve when the tree holding the report and its pictures is moved elsewhere."""
    import re
    import shutil

    src = tmp_path / "src"
    (src / "run" / "figs").mkdir(parents=True)
    (src / "shared").mkdir()
    inside = src / "run" / "figs" / "bev.png"
    outside = src / "shared" / "curves.png"  # beside the report's folder, not in it
    for p in (inside, outside, src / "scene.png"):
        p.write_bytes(b"png")
    monkeypatch.chdir(src)  # a picture given relative to the working directory, as paths are
    write_report(Path("run") / "report.md", "Run", [], [("bev", inside), ("curves", outside), ("scene", "scene.png")])
    shutil.move(str(src), str(tmp_path / "moved"))
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "moved" / "run" / "report.md"
    links = re.findall(r"!\[[^]]*\]\(([^)]*)\)", report.read_text())
    assert links == ["figs/bev.png", "../shared/curves.png", "../scene.png"], links
    for link in links:
        assert (report.parent / link).is_file(), link
