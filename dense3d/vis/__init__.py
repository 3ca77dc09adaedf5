"""Pictures: Open3D scene renders, camera images with boxes, BEV plots, event timelines."""
from dense3d.vis.bev import plot_bev
from dense3d.vis.camera import draw_boxes_on_image, project_points
from dense3d.vis.colors import GT_COLOR, PRED_COLOR, class_colors, height_colors, label_colors
from dense3d.vis.scene3d import BoxLayer, RenderedScene, SceneView, default_view, render_scene, save_png, show_scene
from dense3d.vis.timeline import plot_timeline

__all__ = [
    "BoxLayer", "GT_COLOR", "PRED_COLOR", "RenderedScene", "SceneView", "class_colors", "label_colors", "default_view",
    "draw_boxes_on_image", "height_colors", "plot_bev", "plot_timeline", "project_points", "render_scene",
    "save_png", "show_scene",
]
