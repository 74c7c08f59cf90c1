"""Linear probing, fine-tuning and LP-then-FT with plain PyTorch: the work of one trial, without Ray.

    trainer = Trainer(...)
    for metrics in trainer.epochs():      # one dict per main-phase epoch
        report(metrics, trainer.state_dict())

A strategy is a main phase (`lp` on cached features or `ft` on images) plus, for `lp_ft`,
an LP warm-up on cached features whose head is then copied into the network (Kumar et al.,
"Fine-Tuning can Distort Pretrained Features", 2022). One head shape and one class-balanced
loss serve all strategies, so they differ only in what is trained.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import nn

from fundus_search.data_io import Augmentation, augment, to_float
from fundus_search.metrics import classification_metrics
from fundus_search.models.backbones import NORM_LAYERS, Classifier, FeatureNet, Head, depth_groups, depth_of
from fundus_search.models.features import autocast
from fundus_search.strategy import ALL, LAST_BLOCKS, NORMS, TRANSFER_STRATEGIES
from fundus_search.vocabulary import LP, TRAIN_LOSS, lp_warmup, val

RESIDENT_SHARE = 0.25  # of free GPU memory that the uint8 image array may take to stay on the GPU


def upload_uint8(images: np.ndarray, device: torch.device, chunk: int = 128) -> torch.Tensor:
    """Copy a (possibly read-only, memory-mapped) uint8 array to `device` in chunks."""
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(images), chunk):
        out[start : start + chunk] = torch.from_numpy(np.array(images[start : start + chunk]))
    return out


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches of `batch_size` rows; a last batch of a single row joins the one
    before it, since BatchNorm cannot train on one sample (e.g. 569 rows at batch size 8)."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(start, end) for start, end in zip(starts, starts[1:] + [n], strict=True)]


@dataclass(frozen=True)
class TrainSettings:
    """Hyperparameters of one trial; names are the search-space keys.

    Args:
        strategy: `lp`, `ft` or `lp_ft`.
        max_epochs: main-phase epochs (the LP-FT warm-up does not count).
        lp_lr: AdamW learning rate of the linear probe (lp, and the lp_ft warm-up).
        ft_lr: AdamW learning rate of fine-tuning (ft, lp_ft); the head uses ft_lr x head_lr_mult.
        lp_epochs: LP warm-up epochs of lp_ft.
        ft_blocks: partial_ft: how many of the backbone's last blocks it trains (backbones.depth_groups).
        layer_decay: the fine-tuning rate of a block is layer_decay x the next one's (BEiT, MAE and
            RETFound's rule; 1: one rate for the whole backbone); what follows the blocks and the
            head take ft_lr itself.
        lp_solver: `adamw` (one pass over the training features per epoch) or `lbfgs`
            (scikit-learn LogisticRegression(C=lp_c, class_weight="balanced") to convergence
            in one epoch, as the FLAIR code does).
        grad_clip: max gradient norm during fine-tuning (1.0, as the FLAIR code fine-tunes).
    """

    strategy: str
    max_epochs: int
    lp_lr: float | None = None
    ft_lr: float | None = None
    lp_epochs: int = 0
    ft_blocks: int = 0
    layer_decay: float = 1.0
    weight_decay: float = 1e-4
    batch_size: int = 16
    seed: int = 0
    lp_solver: str = "adamw"
    lp_c: float = 1.0
    head_lr_mult: float = 1.0
    grad_clip: float = 1.0
    eval_batch_size: int = 64
    augmentation: Augmentation = field(default_factory=Augmentation)
    device: str = "cpu"
    images_on_device: bool = True  # CUDA: upload the uint8 images once when they fit (B6: 1.11x per FT epoch)


class Trainer:
    """Trains one configuration epoch by epoch; `state_dict()` resumes it exactly.

    Args:
        settings: the trial's hyperparameters.
        images: (N, S, S, 3) uint8, every image of the dataset (FT reads rows of it).
        labels: (N,) class index.
        train_idx, val_idx: rows of the fold.
        build_net: builds the feature network with its pretrained weights (called for FT only).
        load_features: (N, D) float32 frozen features of every image (called for LP only).
    """

    def __init__(
        self,
        settings: TrainSettings,
        *,
        images: np.ndarray,
        labels: np.ndarray,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        build_net: Callable[[], FeatureNet],
        load_features: Callable[[], np.ndarray],
    ):
        self.settings = settings
        self.strategy = TRANSFER_STRATEGIES[settings.strategy]
        self.device = torch.device(settings.device)
        self.images, self.train_idx, self.val_idx = images, np.asarray(train_idx), np.asarray(val_idx)
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        self.num_classes = int(labels.max()) + 1
        counts = torch.bincount(self.labels[torch.as_tensor(self.train_idx)], minlength=self.num_classes).float()
        self.class_weights = (counts.sum() / (self.num_classes * counts.clamp(min=1))).to(self.device)
        self._build_net, self._load_features = build_net, load_features
        self.generator = torch.Generator().manual_seed(settings.seed)  # shuffling and augmentation
        self.epoch = 0  # main-phase epochs done
        self.warmup_done = not self.strategy.warmup
        self.features: torch.Tensor | None = None  # (N, D) on device, LP phases only
        self.head: Head | None = None
        self.model: Classifier | None = None  # FT phases only
        self.optimizer: torch.optim.Optimizer | None = None
        self.val_probabilities: np.ndarray | None = None  # P(positive) of the last validation, per val_idx row
        self._main_ready = False
        self._frozen_norms: list[nn.Module] = []  # partial_ft: BatchNorms of frozen blocks, kept in eval mode

    @property
    def main_epochs(self) -> int:
        lbfgs_lp = self.strategy.main == LP and self.settings.lp_solver == "lbfgs"
        return 1 if lbfgs_lp else self.settings.max_epochs

    def epochs(self) -> Iterator[dict[str, float]]:
        """Yield one metrics dict per main-phase epoch, from where the state left off."""
        warmup_metrics = {} if self.warmup_done else self._warm_up()
        self._setup_main_phase()
        while self.epoch < self.main_epochs:
            start = time.perf_counter()
            # 1. one pass over the training rows (or one L-BFGS fit)
            if self.strategy.main == LP and self.settings.lp_solver == "lbfgs":
                train_loss = self._fit_lbfgs()
            elif self.strategy.main == LP:
                train_loss = self._train_pass(self.head, self._feature_rows, clip=None)
            else:
                train_loss = self._train_pass(self.model, self._augmented_image_rows, clip=self.settings.grad_clip)
            # 2. validation fold
            metrics = self._validate()
            self.epoch += 1
            seconds = time.perf_counter() - start
            yield {
                "epoch": self.epoch,
                "phase": self.strategy.main,
                TRAIN_LOSS: train_loss,
                **metrics,
                "epoch_seconds": seconds,
                "images_per_second": len(self.train_idx) / seconds,
                **warmup_metrics,
            }
            warmup_metrics = {}

    # ---- phases ----

    def _ensure_features(self) -> None:
        if self.features is None:
            self.features = torch.as_tensor(self._load_features(), dtype=torch.float32, device=self.device)
        if self.head is None:
            self.head = self._new_head(self.features.shape[1])
            # Exact mean and variance of the training features: with a few LP steps per epoch a
            # running average (momentum 0.1) would still be several sigma off.
            self.head.standardise(self.features[torch.as_tensor(self.train_idx, device=self.device)])

    def _new_head(self, dim: int) -> Head:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings.seed)
            return Head(dim, self.num_classes).to(self.device)

    def _lp_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.head.parameters(), lr=self.settings.lp_lr, weight_decay=self.settings.weight_decay
        )

    def _warm_up(self) -> dict[str, float]:
        """LP on cached features for `lp_epochs` (one L-BFGS fit with that solver); `lp_val_*` metrics."""
        self._ensure_features()
        if self.settings.lp_solver == "lbfgs":
            self._fit_lbfgs()
        else:
            optimizer = self._lp_optimizer()
            for _ in range(self.settings.lp_epochs):
                self._train_pass(self.head, self._feature_rows, clip=None, optimizer=optimizer)
        self.warmup_done = True
        metrics = self._predict_metrics(self._feature_rows, self.head)
        self.features = None  # the FT phase no longer needs them
        return {lp_warmup(k): v for k, v in metrics.items()}

    def _setup_main_phase(self) -> None:
        if self._main_ready:
            return
        self._main_ready = True
        if self.strategy.main == LP:
            self._ensure_features()
            if self.settings.lp_solver == "adamw":
                self.optimizer = self._lp_optimizer()
            return
        net = self._build_net()
        head = self.head if self.head is not None else self._new_head(net.feature_dim)  # LP-FT: the probe
        self.model = Classifier(net, head).to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        s = self.settings
        self.optimizer = torch.optim.AdamW(
            [*self._backbone_groups(), {"params": self.model.head.parameters(), "lr": s.ft_lr * s.head_lr_mult}],
            weight_decay=s.weight_decay,
        )
        self.head = self.model.head

    def _backbone_groups(self) -> list[dict]:
        """The optimiser's groups for the feature network: what the strategy trains, each block at
        its depth's rate; every other parameter frozen (`requires_grad` off, not in the optimiser,
        its BatchNorm statistics kept by eval mode), so it stays bit-identical."""
        s, net, trains = self.settings, self.model.features, self.strategy.trains
        if trains == ALL and s.layer_decay == 1.0:
            return [{"params": net.parameters(), "lr": s.ft_lr}]
        groups = depth_groups(net.backbone) if trains == LAST_BLOCKS or s.layer_decay != 1.0 else None
        last = len(groups) - 1 if groups else 0  # what follows the blocks: ft_lr itself
        first = max(1, last - s.ft_blocks) if trains == LAST_BLOCKS else 0  # never the stem
        norms = {id(p) for m in net.backbone.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(False)}
        by_depth: dict[int, list[nn.Parameter]] = {}
        for name, param in net.backbone.named_parameters():
            depth = depth_of(name, groups) if groups else 0
            trained = depth >= first if trains == LAST_BLOCKS else id(param) in norms if trains == NORMS else True
            param.requires_grad_(trained)
            if trained:
                by_depth.setdefault(depth, []).append(param)
        if net.projection is not None:  # FLAIR's projection follows the backbone
            for param in net.projection.parameters():
                param.requires_grad_(trains != NORMS)
                if trains != NORMS:
                    by_depth.setdefault(last, []).append(param)
        if trains == LAST_BLOCKS:
            self._frozen_norms = [
                m for name, m in net.backbone.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and depth_of(name, groups) < first
            ]  # fmt: skip
        return [{"params": ps, "lr": s.ft_lr * s.layer_decay ** (last - d)} for d, ps in sorted(by_depth.items())]

    # ---- the shared step ----

    def _train_pass(
        self,
        model: nn.Module,
        rows: Callable[[np.ndarray, bool], torch.Tensor],
        *,
        clip: float | None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> float:
        """One shuffled pass over the training rows with class-balanced cross-entropy."""
        optimizer = optimizer or self.optimizer
        model.train()
        if model is self.head:  # a probe on frozen features: a fixed standardisation (see _ensure_features)
            self.head.norm.eval()
        for norm in self._frozen_norms if model is self.model else ():
            norm.eval()
        order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.generator).numpy()]
        total = torch.zeros((), device=self.device)  # summed on the device: no sync per step
        for batch in batch_slices(len(order), self.settings.batch_size):
            idx = order[batch]
            with autocast(self.device):
                logits = model(rows(idx, True))
            loss = F.cross_entropy(logits.float(), self.labels[idx], weight=self.class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            total += loss.detach() * len(idx)
        return total.item() / len(order)

    def _fit_lbfgs(self) -> float:
        """Fit the head to convergence with scikit-learn; return its training loss.

        The logistic regression sees the features standardised by the head's normalisation
        (the training features' exact mean and variance), as the AdamW probe does.
        """
        train = self.features[torch.as_tensor(self.train_idx, device=self.device)]
        norm, linear = self.head.norm, self.head.linear
        with torch.no_grad():
            x = norm.eval()(train).cpu().numpy()  # standardised with the exact statistics
        y = self.labels[self.train_idx].cpu().numpy()
        fit = LogisticRegression(C=self.settings.lp_c, class_weight="balanced", max_iter=2000).fit(x, y)
        weight = torch.as_tensor(fit.coef_, dtype=torch.float32, device=self.device)
        bias = torch.as_tensor(fit.intercept_, dtype=torch.float32, device=self.device)
        if weight.shape[0] == 1:  # binary: logit difference w.x + b split over two logits
            weight, bias = torch.cat([-weight, weight]) / 2, torch.cat([-bias, bias]) / 2
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
            logits = self.head.eval()(train)
            return F.cross_entropy(logits, self.labels[self.train_idx], weight=self.class_weights).item()

    def _feature_rows(self, idx: np.ndarray, train: bool) -> torch.Tensor:
        return self.features[torch.as_tensor(idx, device=self.device)]

    @cached_property
    def _resident_images(self) -> torch.Tensor | None:
        """The whole uint8 array on the GPU, uploaded on first use, if it takes at most
        RESIDENT_SHARE of the free GPU memory: a batch is then an index on the device, not a
        host copy and upload. None elsewhere."""
        if self.device.type != "cuda" or not self.settings.images_on_device:
            return None
        free, _ = torch.cuda.mem_get_info(self.device)
        return upload_uint8(self.images, self.device) if self.images.nbytes <= RESIDENT_SHARE * free else None

    def _augmented_image_rows(self, idx: np.ndarray, train: bool) -> torch.Tensor:
        resident = self._resident_images
        if resident is not None:
            batch = resident[torch.as_tensor(idx, device=self.device)]
        else:
            batch = torch.from_numpy(self.images[idx]).to(self.device, non_blocking=True)  # fancy index: a copy
        x = to_float(batch)  # (B, 3, S, S) in [0, 1]
        if train:
            x = augment(x, self.generator, self.settings.augmentation)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    # ---- evaluation ----

    def _validate(self) -> dict[str, float]:
        if self.strategy.main == LP:
            return self._predict_metrics(self._feature_rows, self.head)
        return self._predict_metrics(self._augmented_image_rows, self.model)

    @torch.no_grad()
    def _predict_metrics(self, rows, model: nn.Module) -> dict[str, float]:
        model.eval()
        probs = []
        for start in range(0, len(self.val_idx), self.settings.eval_batch_size):
            idx = self.val_idx[start : start + self.settings.eval_batch_size]
            with autocast(self.device):
                probs.append(torch.softmax(model(rows(idx, False)).float(), dim=1)[:, 1].cpu())
        y = self.labels[torch.as_tensor(self.val_idx)].cpu().numpy()
        self.val_probabilities = torch.cat(probs).numpy()  # (len(val_idx),) float32, rows val_idx
        metrics = classification_metrics(y, self.val_probabilities)
        return {val(k): v for k, v in metrics.items()}

    def classifier(self) -> Classifier:
        """The trained network as one module, for a model bundle: the fine-tuned network, or for
        LP the frozen network its features came from with the probe on top."""
        if self.model is not None:
            return self.model
        return Classifier(self._build_net(), self.head)

    # ---- checkpointing ----

    def state_dict(self) -> dict:
        """Everything needed to continue bit-for-bit: weights, optimiser, epoch, RNG."""
        return {
            "epoch": self.epoch,
            "warmup_done": self.warmup_done,
            "generator": self.generator.get_state(),
            "head": self.head.state_dict() if self.head is not None else None,
            "net": self.model.features.state_dict() if self.model is not None else None,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.warmup_done = bool(state["warmup_done"])
        self.generator.set_state(state["generator"])
        if self.epoch == 0:  # saved before any main-phase epoch: nothing trained to restore
            return
        self._setup_main_phase()
        self.head.load_state_dict(state["head"])
        if state["net"] is not None:
            self.model.features.load_state_dict(state["net"])
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
