"""dense3d vis: a class keeps its colour from scene to scene (pictures are not drawn here)."""
import json

import numpy as np

import dense3d.vis as vis
from dense3d.engine.visualize import main


def test_a_class_keeps_its_colour_whatever_else_the_scene_holds(samples, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(vis, "render_scene", lambda pts, colors, layers, **kw: drawn.append(layers) or vis.RenderedScene(
        np.zeros((4, 4, 3), np.uint8), np.eye(4), np.eye(4)))
    monkeypatch.setattr(vis, "plot_bev", lambda *a, **kw: tmp_path / "bev.png")
    monkeypatch.setattr(vis, "draw_boxes_on_image", lambda image, *a, **kw: image)
    monkeypatch.setattr(vis, "save_png", lambda image, path: path)
    info = next((samples / "nuscenes").glob("*.pkl"))
    scene = "ca9a282c9e77460f8360f564131a8af5"
    box = [10.0, 0.0, -1.0, 4.0, 2.0, 1.6, 0.3]
    for k, labels in enumerate((["car"], ["pedestrian", "car"], ["bicycle", "car", "truck"])):
        pred = {scene: [{"box": box, "caption": "x", "score": 0.9, "label": name} for name in labels]}
        (tmp_path / f"pred{k}.json").write_text(json.dumps(pred))
        assert main(["--info", str(info), "--pred", str(tmp_path / f"pred{k}.json"), "--out", str(tmp_path / "x.png")]) == 0
    car = [layers[1].colors[labels.index("car")] for layers, labels in zip(drawn, (["car"], ["pedestrian", "car"], ["bicycle", "car", "truck"]))]
    assert all(np.array_equal(c, car[0]) for c in car), car
