"""Datasets, preprocessing, the decoded-image cache, folds, synthetic data and augmentation."""

from fundus_search.data_io.augment import Augmentation, augment, to_float
from fundus_search.data_io.folds import FoldError, fold_indices, held_out_indices, split_indices
from fundus_search.data_io.image_cache import ImageCache, fingerprint_manifest, load_or_build_image_cache, scan_images
from fundus_search.data_io.manifest import SOURCES, BadFile, BadFilesError, Manifest, ManifestError, build_manifest
from fundus_search.data_io.prepare import prepare_images
from fundus_search.data_io.preprocess import Preprocessing, decode_image, preprocess_file, preprocess_image
from fundus_search.data_io.spec import DataSpec, SyntheticSpec, default_cache_dir

__all__ = [
    "Augmentation",
    "augment",
    "to_float",
    "FoldError",
    "fold_indices",
    "split_indices",
    "held_out_indices",
    "ImageCache",
    "fingerprint_manifest",
    "load_or_build_image_cache",
    "scan_images",
    "SOURCES",
    "BadFile",
    "BadFilesError",
    "Manifest",
    "ManifestError",
    "build_manifest",
    "prepare_images",
    "Preprocessing",
    "decode_image",
    "preprocess_file",
    "preprocess_image",
    "DataSpec",
    "SyntheticSpec",
    "default_cache_dir",
]
