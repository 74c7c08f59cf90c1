"""Backbones, weight sources, the frozen-feature cache, LP / FT / LP-FT training and CPU timing."""

from fundus_search.models.backbones import (
    BACKBONES,
    NORMALIZATIONS,
    Classifier,
    FeatureNet,
    backbone_dim,
    build_backbone,
    is_backbone,
)
from fundus_search.models.features import extract_features, feature_cache_key, load_or_extract_features
from fundus_search.models.inference import cpu_ms_per_image, cpu_ms_samples
from fundus_search.models.transfer import Trainer, TrainSettings
from fundus_search.models.weights import WEIGHT_SOURCES, InitSpec, WeightsError, build_feature_net, weights_id

__all__ = [
    "BACKBONES",
    "NORMALIZATIONS",
    "Classifier",
    "FeatureNet",
    "backbone_dim",
    "build_backbone",
    "is_backbone",
    "extract_features",
    "feature_cache_key",
    "load_or_extract_features",
    "cpu_ms_per_image",
    "cpu_ms_samples",
    "Trainer",
    "TrainSettings",
    "WEIGHT_SOURCES",
    "InitSpec",
    "WeightsError",
    "build_feature_net",
    "weights_id",
]
