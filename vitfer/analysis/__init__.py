"""Figures and explanations of trained models: attention rollout, GPSA gating, attention
distances, CrossViT cross-attention, Grad-CAM, pre-logit features and t-SNE, what ConViT's GPSA
gates learned, and the report.

    from vitfer.analysis import attention_rollout, gpsa_gates, extract_features, tsne, plot_confusion
    R = attention_rollout(model, x)              # (B, T, T), rows sum to one
    fig = plot_confusion(m["confusion"], m["class_names"])   # a matplotlib Figure
    gpsa_gates(convit).verdict                   # did the gates leave 0.731, later layers less positional?

The functions that return tensors need only torch; the figures need matplotlib and t-SNE
scikit-learn (``pip install 'vitfer[plots]'``; without it they raise an ImportError saying so).
"""
from .attention import (
    FLAT_RTOL, MIN_MAP_SIDE, Heatmap, attention_distances, attention_heatmaps, attention_rollout, cam_layers,
    choose_cam_layer, crossvit_cls_attention, gpsa_gating, grad_cam, heatmaps, map_contrast, model_kind, rollout_map,
)
from .features import extract_features, tsne
from .gates import GATE_ATOL, POSITIONAL, GPSAGates, gpsa_gates, init_gates, spearman
from .plots import (
    display_images, plot_attention, plot_attention_distance, plot_confusion, plot_fold_accuracy, plot_gating,
    plot_learning_curves, plot_model_attention, plot_tsne, save_figure, upsample_maps,
)
from .report import (
    has_gpsa_gates, is_cv_folder, load_cv, load_run, most_confused, run_test_set, run_title, write_report,
)

__all__ = [
    "FLAT_RTOL", "MIN_MAP_SIDE", "Heatmap", "attention_distances", "attention_heatmaps", "attention_rollout",
    "cam_layers", "choose_cam_layer", "crossvit_cls_attention", "gpsa_gating", "grad_cam", "heatmaps", "map_contrast",
    "model_kind", "rollout_map", "extract_features", "tsne", "GATE_ATOL", "POSITIONAL", "GPSAGates", "gpsa_gates",
    "init_gates", "spearman", "display_images", "plot_attention", "plot_attention_distance", "plot_confusion",
    "plot_fold_accuracy", "plot_gating", "plot_learning_curves", "plot_model_attention", "plot_tsne", "save_figure",
    "upsample_maps", "has_gpsa_gates", "is_cv_folder", "load_cv", "load_run", "most_confused", "run_test_set",
    "run_title", "write_report",
]
