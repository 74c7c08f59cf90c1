"""Backbones, weight sources, the frozen-feature cache, LP / FT / LP-FT training and metrics."""

from .backbones import BACKBONES, NORMALIZATIONS, Classifier, FeatureNet, build_backbone
from .features import extract_features, feature_cache_key, load_or_extract_features
from .metrics import METRICS, VAL_METRICS, classification_metrics, cpu_seconds_per_image
from .transfer import STRATEGIES, Trainer, TrainSettings
from .weights import WEIGHT_SOURCES, InitSpec, WeightsError, build_feature_net, weights_id

__all__ = [
    "BACKBONES", "NORMALIZATIONS", "Classifier", "FeatureNet", "build_backbone", "extract_features",
    "feature_cache_key", "load_or_extract_features", "METRICS", "VAL_METRICS", "classification_metrics",
    "cpu_seconds_per_image", "STRATEGIES", "Trainer", "TrainSettings", "WEIGHT_SOURCES", "InitSpec",
    "WeightsError", "build_feature_net", "weights_id",
]
