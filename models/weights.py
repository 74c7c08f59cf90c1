"""Weight sources: ImageNet (torchvision), FLAIR, RETFound (MAE), DINOv2-style teachers, plain timm
files and random initialisation, loaded offline and safely: never a download, never a pickle
that runs code, every key checked."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from fundus_search.models.backbones import BACKBONES, FeatureNet, FlairProjection, build_backbone, feature_width
from fundus_search.vocabulary import UserError

FLAIR_PREFIX = "vision_model.model."
FLAIR_PROJECTION_KEY = "vision_model.projection_head_vision.projection.weight"
FLAIR_FILE_NAMES = ("model.safetensors", "flair_resnet.pth")  # looked for inside a folder


class WeightsError(UserError):
    """A weight file is missing, unsafe or does not fit the backbone; the message says which."""


@dataclass(frozen=True)
class InitSpec:
    """How one `init` builds its backbone.

    Args:
        source: a key of WEIGHT_SOURCES (`torchvision`, `flair`, `retfound`, `dinov2`, `timm`, `random`).
        weights: torchvision weights enum member (e.g. IMAGENET1K_V1), for `torchvision`.
        path: an explicit weight file (or, for `flair`, a folder holding one).
        projection: FLAIR only: add the 512-d projection head (features become 512-d).
        pool: how a timm backbone pools its tokens into one vector (`avg`: the mean of the patch
            tokens; `token`: the class token); None: the source's recipe (RETFound: avg), else the
            architecture's default.
        normalize: input normalisation, `none`, `imagenet` or `half`; None: the source's own, as
            torchvision's weights carry their transforms (torchvision: imagenet, since its
            ImageNet weights expect ImageNet mean/std; flair: none, since FLAIR was pretrained
            on [0, 1] inputs; random: none).
    """

    source: str
    weights: str | None = None
    path: Path | None = None
    projection: bool = False
    normalize: str | None = None
    pool: str | None = None

    def __post_init__(self):
        if self.normalize is None and self.source in WEIGHT_SOURCES:
            object.__setattr__(self, "normalize", WEIGHT_SOURCES[self.source].normalize)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_state_dict(
    path: Path, where: str, *, wrappers: tuple[str, ...] = ("state_dict", "model")
) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` or `.pth` file, never unpickling arbitrary objects.

    `.pth` files load with `torch.load(weights_only=True)`; the first of `wrappers` found (e.g.
    `{"model": ...}`, a DINOv2 training checkpoint's `{"teacher": ...}`) is unwrapped.

    Raises:
        WeightsError: unreadable, not a checkpoint, or a pickle that would run code (the
            original exception is kept as the cause, shown with --debug).
    """
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path))
        except SafetensorError as exc:
            raise WeightsError(f"{where}: {path} is not a safetensors checkpoint ({exc})") from exc
        except OSError as exc:
            raise WeightsError(f"{where}: cannot read {path} ({exc.strerror or exc}); check the file") from exc
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it better
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise WeightsError(f"{where}: cannot read {path} ({exc.strerror or exc}); check the file") from exc
    except pickle.UnpicklingError as exc:
        code = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)
        if code:  # the weights-only unpickler met a reference to a callable: loading would run it
            raise WeightsError(
                f"{where}: refused {path}: it is not a plain weights file and would run code "
                f"on load ({code}); export a state dict or safetensors instead"
            ) from exc
        raise WeightsError(
            f"{where}: {path} is not a PyTorch checkpoint (unreadable pickle data); "
            "pass a .pth state dict or a .safetensors file"
        ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError) as exc:  # zip or pickle framing
        raise WeightsError(
            f"{where}: {path} is not a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass a .pth state dict or a "
            ".safetensors file"
        ) from exc
    for wrapper in wrappers:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{where}: {path} holds no state dict of tensors; pass a weights file")
    return state


def _guess_resnet(state: dict[str, torch.Tensor]) -> str | None:
    """Which torchvision ResNet a state dict belongs to, from its block structure."""
    if "layer3.0.conv1.weight" not in state:
        return None
    blocks = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
    bottleneck = "layer1.0.conv3.weight" in state
    return {
        (False, 2): "resnet18",
        (False, 6): "resnet34",
        (True, 6): "resnet50",
        (True, 23): "resnet101",
        (True, 36): "resnet152",
    }.get((bottleneck, blocks))


def load_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], backbone: str, where: str, *, fresh: tuple[str, ...] = ()
) -> None:
    """`load_state_dict(strict=True)` with a one-line error naming what does not fit.

    Args:
        fresh: keys the checkpoint is known not to hold, kept at their initialisation (RETFound's
            fine-tuning norm); any other missing key is an error.
    """
    guessed = _guess_resnet(state)
    if guessed and guessed != backbone:
        raise WeightsError(
            f"{where}: checkpoint is a {guessed} but the architecture is {backbone}; "
            f"set {where}.arch (or model.backbone): {guessed}, or use {backbone} weights"
        )
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and expected[key].shape != tensor.shape:
            raise WeightsError(
                f"{where}: shape mismatch at {key}: checkpoint {tuple(tensor.shape)}, "
                f"{backbone} expects {tuple(expected[key].shape)}; check {where}.arch and the file"
            )
    missing = sorted(set(expected) - set(state) - set(fresh))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{where}: checkpoint does not fit {backbone}: missing {missing[:3]}"
            f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{f' and {len(unexpected) - 3} more' if len(unexpected) > 3 else ''}; check {where}.arch and the file"
        )
    model.load_state_dict(state, strict=not fresh)


def torchvision_weights_file(init: InitSpec, backbone: str, where: str) -> Path:
    """The file of a torchvision weights enum in the local torch hub cache, or `init.path`."""
    if init.path is not None:
        if not init.path.is_file():
            raise WeightsError(f"{where}.path: no such file {init.path}; put the weights there or fix the path")
        return init.path
    enum_name = BACKBONES[backbone].weights_enum
    try:
        weights = torchvision.models.get_weight(f"{enum_name}.{init.weights}")
    except (KeyError, AttributeError, ValueError):
        valid = [w.name for w in torchvision.models.get_model_weights(backbone)]
        raise WeightsError(
            f"{where}.weights: {init.weights!r} is not a {enum_name} member; use one of {valid}"
        ) from None
    name = Path(weights.url).name
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    if not (folder / name).is_file():
        raise WeightsError(
            f"{where}: {name} not found in {folder}; this tool never downloads: copy it there "
            f"(from {weights.url}) or set {where}.path"
        )
    return folder / name


def flair_weights_file(init: InitSpec, backbone: str, where: str) -> Path:
    path = init.path
    if path is not None and path.is_dir():
        found = [path / n for n in FLAIR_FILE_NAMES if (path / n).is_file()]
        if not found:
            raise WeightsError(
                f"{where}.path: {path} holds none of {list(FLAIR_FILE_NAMES)}; put the FLAIR weights there"
            )
        path = found[0]
    if path is None or not path.is_file():
        raise WeightsError(
            f"{where}.path: no such file {path}; put the FLAIR weights there (flair_resnet.pth, from "
            "https://github.com/jusiro/FLAIR) or fix the path"
        )
    return path


def weights_path(init: InitSpec, backbone: str, where: str) -> Path:
    """`init.path`, checked to be a file (the sources whose weights have no default place)."""
    if init.path is None or not init.path.is_file():
        raise WeightsError(
            f"{where}.path: no such file {init.path}; put the {init.source} weights there or fix the path"
        )
    return init.path


def _build_torchvision(init: InitSpec, backbone: str, where: str, seed: int, image_size: int | None) -> FeatureNet:
    model = build_backbone(backbone)
    path = torchvision_weights_file(init, backbone, where)
    state = {k: v for k, v in read_state_dict(path, where).items() if not k.startswith("fc.")}
    load_strict(model, state, backbone, where)
    return FeatureNet(model, feature_width(model), normalize=init.normalize)


def _build_flair(init: InitSpec, backbone: str, where: str, seed: int, image_size: int | None) -> FeatureNet:
    state = read_state_dict(flair_weights_file(init, backbone, where), where)
    vision = {k[len(FLAIR_PREFIX) :]: v for k, v in state.items() if k.startswith(FLAIR_PREFIX)}
    if not vision:
        raise WeightsError(f"{where}: no '{FLAIR_PREFIX}*' keys in the checkpoint; is it a FLAIR checkpoint?")
    model = build_backbone(backbone)
    load_strict(model, vision, backbone, where)
    dim, projection = feature_width(model), None
    if init.projection:
        if FLAIR_PROJECTION_KEY not in state:
            raise WeightsError(f"{where}: projection: true but {FLAIR_PROJECTION_KEY} is not in the checkpoint")
        weight = state[FLAIR_PROJECTION_KEY]  # (512, 2048)
        if weight.shape[1] != dim:
            raise WeightsError(
                f"{where}: shape mismatch at {FLAIR_PROJECTION_KEY}: checkpoint "
                f"{tuple(weight.shape)}, {backbone} gives {dim}-d features"
            )
        projection = FlairProjection(dim, weight.shape[0])
        projection.projection.weight.data.copy_(weight)
        dim = weight.shape[0]
    return FeatureNet(model, dim, normalize=init.normalize, projection=projection)


def _build_random(init: InitSpec, backbone: str, where: str, seed: int, image_size: int | None) -> FeatureNet:
    options = backbone_options(init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_backbone(backbone, image_size=image_size, **options)
    return FeatureNet(model, feature_width(model), normalize=init.normalize)


# RETFound fine-tunes with global pooling: the mean of the patch tokens, then a new LayerNorm
# (`fc_norm`, absent from the MAE checkpoint, starts as the identity); the encoder's last norm goes.
RETFOUND_OPTIONS = {"global_pool": "avg", "fc_norm": True}
_RETFOUND_DROPPED = ("decoder", "mask_token", "head.", "norm.")  # MAE's decoder, mask token, head, last norm


def backbone_options(init: InitSpec) -> dict:
    """The timm `create_model` arguments of `init`'s backbone: its source's recipe, then its own pooling."""
    options = dict(WEIGHT_SOURCES[init.source].options) if init.source in WEIGHT_SOURCES else {}
    return options | ({"pool": init.pool} if init.pool else {})


def _timm_layout(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's own conversion of a ViT checkpoint to its model: DINOv2's names (registers, SwiGLU)
    and the position-embedding grid resampled to the model's input size."""
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    return checkpoint_filter_fn(state, model) if isinstance(model, VisionTransformer) else state


def _build_retfound(init: InitSpec, backbone: str, where: str, seed: int, image_size: int | None) -> FeatureNet:
    state = read_state_dict(weights_path(init, backbone, where), where)
    if not any(k.startswith("blocks.") for k in state):
        raise WeightsError(f"{where}: no 'blocks.*' keys in {init.path}; is it a RETFound (MAE ViT) checkpoint?")
    encoder = {k: v for k, v in state.items() if not k.startswith(_RETFOUND_DROPPED)}
    options = backbone_options(init)
    model = build_backbone(backbone, image_size=image_size, **options)
    fresh = tuple(k for k in ("fc_norm.weight", "fc_norm.bias") if options.get("fc_norm"))
    load_strict(model, _timm_layout(encoder, model), backbone, where, fresh=fresh)
    return FeatureNet(model, feature_width(model), normalize=init.normalize)


def _build_dinov2(init: InitSpec, backbone: str, where: str, seed: int, image_size: int | None) -> FeatureNet:
    state = read_state_dict(weights_path(init, backbone, where), where, wrappers=("teacher", "state_dict", "model"))
    heads = ("dino_head.", "ibot_head.")  # the training heads beside the teacher's backbone
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith(heads)}
    if "mask_token" not in state:
        raise WeightsError(f"{where}: no mask_token in {init.path}; is it a DINOv2 backbone or teacher checkpoint?")
    options = backbone_options(init)
    model = build_backbone(backbone, image_size=image_size, **options)
    load_strict(model, _timm_layout(state, model), backbone, where)
    return FeatureNet(model, feature_width(model), normalize=init.normalize)


def _build_timm(init: InitSpec, backbone: str, where: str, seed: int, image_size: int | None) -> FeatureNet:
    state = read_state_dict(weights_path(init, backbone, where), where)
    options = backbone_options(init)
    model = build_backbone(backbone, image_size=image_size, **options)
    classifier = model.pretrained_cfg.get("classifier") or "head"  # dropped: this tool trains its own head
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    load_strict(model, _timm_layout(state, model), backbone, where)
    return FeatureNet(model, feature_width(model), normalize=init.normalize)


@dataclass(frozen=True)
class WeightSource:
    """How a source finds its file (checked to exist; None when it has none), builds the
    network, and which input normalisation its weights expect (a key of NORMALIZATIONS)."""

    find_file: Callable[[InitSpec, str, str], Path | None]  # (init, backbone, where)
    build: Callable[[InitSpec, str, str, int, int | None], FeatureNet]  # (init, backbone, where, seed, image_size)
    normalize: str
    options: dict = field(default_factory=dict)  # timm create_model arguments its recipe needs (pooling)


WEIGHT_SOURCES: dict[str, WeightSource] = {
    "torchvision": WeightSource(torchvision_weights_file, _build_torchvision, normalize="imagenet"),
    "flair": WeightSource(flair_weights_file, _build_flair, normalize="none"),
    "random": WeightSource(lambda init, backbone, where: None, _build_random, normalize="none"),
    "retfound": WeightSource(weights_path, _build_retfound, normalize="imagenet", options=RETFOUND_OPTIONS),
    "dinov2": WeightSource(weights_path, _build_dinov2, normalize="imagenet"),
    "timm": WeightSource(weights_path, _build_timm, normalize="imagenet"),
}


def weights_file(init: InitSpec, backbone: str, where: str) -> Path | None:
    """The file an init loads, checked to exist (None for `random`)."""
    return WEIGHT_SOURCES[init.source].find_file(init, backbone, where)


def weights_id(init: InitSpec, backbone: str, *, seed: int, where: str = "model.inits") -> str:
    """Provenance and cache-key id of an init: the sha256 of its file, or `random-<backbone>-<seed>`."""
    path = weights_file(init, backbone, where)
    return file_sha256(path) if path else f"random-{backbone}-{seed}"


def build_feature_net(
    init: InitSpec, backbone: str, *, seed: int = 0, where: str = "model.inits", image_size: int | None = None
) -> FeatureNet:
    """The backbone of `init` with its weights, normalisation and optional projection.

    Args:
        init: the weight source.
        backbone: a torchvision ResNet of BACKBONES or a timm architecture.
        seed: initialisation seed for `random`.
        where: config key path used in error messages (e.g. `model.inits.flair`).
        image_size: the input size, for architectures built for one (ViTs: their position grid).

    Raises:
        WeightsError: missing, unsafe or mismatched weights (one line naming the file and fix).
    """
    if init.source not in WEIGHT_SOURCES:
        raise WeightsError(f"{where}.source: unknown {init.source!r}; use one of {sorted(WEIGHT_SOURCES)}")
    return WEIGHT_SOURCES[init.source].build(init, backbone, where, seed, image_size)
