"""A trained classifier as a folder anyone can load and score with: `model.safetensors` (the whole
network), `model.json` (how it was built and trained, and the preprocessing it expects) and a
short `README.md` model card, after the shape of a Hugging Face model folder.

Loading builds the architecture `model.json` names, checks the weight file's sha256 against
it, and loads it strictly: no pickle is ever read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fundus_search.data_io import Preprocessing, to_float
from fundus_search.metrics import THRESHOLD
from fundus_search.models.backbones import (
    NORMALIZATIONS,
    Classifier,
    FeatureNet,
    FlairProjection,
    Head,
    build_backbone,
    feature_width,
    is_backbone,
)
from fundus_search.models.weights import file_sha256
from fundus_search.results.layout import write_atomic
from fundus_search.vocabulary import UserError

FORMAT = 1  # of model.json
WEIGHTS_FILE, META_FILE, CARD_FILE = "model.safetensors", "model.json", "README.md"


class BundleError(UserError):
    """A folder is not a whole, unaltered model bundle; the message says which file and why."""


@dataclass(frozen=True)
class Architecture:
    """What to build before loading the weights.

    Attributes:
        backbone: a torchvision ResNet of BACKBONES or a timm architecture.
        normalize: the input normalisation inside the network (a key of NORMALIZATIONS).
        projection_dim: width of FLAIR's projection when the init used it; None otherwise.
        num_classes: outputs of the head (2: negative, positive).
        options: timm `create_model` arguments of the init's recipe (RETFound's pooling).
    """

    backbone: str
    normalize: str
    projection_dim: int | None = None
    num_classes: int = 2
    options: dict = field(default_factory=dict)

    @classmethod
    def of(cls, classifier: Classifier, backbone: str, options: dict | None = None) -> Architecture:
        """The architecture of `classifier`, whose backbone is `backbone` built with `options`."""
        net = classifier.features
        projection = net.projection.projection.out_features if net.projection is not None else None
        return cls(backbone, net.normalize.name, projection, classifier.head.linear.out_features, dict(options or {}))

    def build(self, image_size: int | None = None) -> Classifier:
        """The network with this architecture and untrained weights, in eval mode."""
        backbone = build_backbone(self.backbone, image_size=image_size, **self.options)
        dim = feature_width(backbone)
        projection = FlairProjection(dim, self.projection_dim) if self.projection_dim else None
        net = FeatureNet(
            backbone,
            self.projection_dim or dim,
            normalize=self.normalize,
            projection=projection,
        )
        return Classifier(net, Head(net.feature_dim, self.num_classes)).eval()


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the network (eval mode, on the CPU), its preprocessing and its record."""

    path: Path
    classifier: Classifier
    preprocessing: Preprocessing
    classes: tuple[str, ...]
    meta: dict

    @torch.no_grad()
    def prob_positive(self, images: np.ndarray, *, device: str = "cpu") -> np.ndarray:
        """P(positive) of (N, S, S, 3) uint8 images preprocessed as `preprocessing` says."""
        model = self.classifier.to(device)
        logits = model(to_float(torch.from_numpy(np.ascontiguousarray(images)).to(device)))
        return torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()


def save_bundle(
    folder: str | Path,
    classifier: Classifier,
    *,
    backbone: str,
    preprocessing: Preprocessing,
    classes: tuple[str, ...],
    record: dict,
    backbone_options: dict | None = None,
) -> Path:
    """Write a bundle into `folder` (created; it must not hold a bundle already).

    Args:
        record: what `model.json` says of the model besides its architecture and preprocessing:
            init and its weights id, strategy, hyperparameters, epochs, data, metrics, versions.
        backbone_options: the timm arguments `backbone` was built with (the init source's).

    Raises:
        BundleError: `folder` already holds a bundle.
    """
    folder = Path(folder)
    if (folder / META_FILE).exists():
        raise BundleError(f"{folder}: already holds a model bundle; pass another --output folder")
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS_FILE)
    architecture = Architecture.of(classifier, backbone, backbone_options)
    meta = {
        "format": FORMAT,
        "architecture": asdict(architecture),
        "preprocessing": {
            **asdict(preprocessing),
            "input": "RGB, uint8 (H, W, 3) -> long side resized to image_size, zero-padded square, "
            "divided by 255; the network applies `architecture.normalize` itself",
            "normalize": NORMALIZATIONS[architecture.normalize],
        },
        "decision": {"classes": list(classes), "positive": classes[-1], "threshold": THRESHOLD},
        "weights_sha256": file_sha256(folder / WEIGHTS_FILE),
        **record,
    }
    write_atomic(folder / CARD_FILE, model_card(meta))
    write_atomic(folder / META_FILE, json.dumps(meta, indent=2, default=str))  # last: the bundle is whole
    return folder


def load_bundle(folder: str | Path) -> Bundle:
    """Raises BundleError: no bundle there, a format this version cannot read, or weights that
    are not the ones `model.json` records (altered or swapped)."""
    folder = Path(folder)
    meta_path, weights = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise BundleError(f"{folder}: not a model bundle (no {META_FILE} and {WEIGHTS_FILE}); pass the folder "
                          "`train --output` or `evaluate` wrote")  # fmt: skip
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        architecture = Architecture(**meta["architecture"])
        preprocessing = Preprocessing(
            image_size=int(meta["preprocessing"]["image_size"]),
            crop_foreground=bool(meta["preprocessing"]["crop_foreground"]),
        )
        classes, recorded = tuple(meta["decision"]["classes"]), str(meta["weights_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{meta_path}: not a model.json fundus-search wrote ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: bundle format {meta.get('format')!r}; this version reads format {FORMAT}")
    if not is_backbone(architecture.backbone) or architecture.normalize not in NORMALIZATIONS:
        raise BundleError(f"{meta_path}: unknown architecture {meta['architecture']}")
    actual = file_sha256(weights)
    if actual != recorded:
        raise BundleError(
            f"{weights}: sha256 {actual[:12]}... is not the {recorded[:12]}... {META_FILE} records; the weights "
            "were altered or swapped: use the bundle as it was written"
        )
    classifier = architecture.build(preprocessing.image_size)
    try:
        classifier.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{weights}: does not fit {architecture} ({str(exc).splitlines()[0]})") from None
    return Bundle(folder, classifier.eval(), preprocessing, classes, meta)


def model_card(meta: dict) -> str:
    """The bundle's README.md: what the model is, what it was trained on, how it was evaluated."""
    arch, pre, decision = meta["architecture"], meta["preprocessing"], meta["decision"]
    params = ", ".join(f"{k}={v}" for k, v in (meta.get("hyperparameters") or {}).items()) or "none searched"
    metrics = meta.get("metrics") or {}
    lines = [
        f"# {meta.get('name', 'fundus-search model')}",
        "",
        f"A {arch['backbone']} binary classifier of fundus photographs ({', '.join(decision['classes'])}),",
        f"initialised from `{meta.get('init', '?')}` and trained by `{meta.get('strategy', '?')}` with fundus-search.",
        "",
        "## Use",
        "",
        "    fundus-search predict THIS_FOLDER IMAGES... --output predictions.csv",
        "",
        f"Input: RGB images, long side resized to {pre['image_size']} px and zero-padded square"
        f"{', cropped to the fundus first' if pre['crop_foreground'] else ''}; pixels / 255, then the network's own"
        f" `{arch['normalize']}` normalisation. Decision: {decision['positive']} when P({decision['positive']}) >= "
        f"{decision['threshold']}.",
        "",
        "## Training",
        "",
        f"- data: {meta.get('data', 'not recorded')}",
        f"- trained on: {meta.get('trained_on', 'not recorded')}",
        f"- hyperparameters: {params}; {meta.get('epochs', '?')} main-phase epochs; seed {meta.get('seed', '?')}",
        f"- initial weights: {meta.get('weights_id', 'not recorded')}",
        "",
        "## Evaluation",
        "",
        (
            "; ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
            + f" ({meta.get('metrics_on', 'scored rows')})"
            if metrics
            else "Not evaluated here: score it on held-out data."
        ),
        "",
        f"fundus-search {meta.get('versions', {}).get('fundus-search', '')}, git {meta.get('git_commit', 'unknown')}.",
        "",
    ]
    return "\n".join(lines)
