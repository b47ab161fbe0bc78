"""Pictures that let astronomers judge a CNN: curves, confusion matrices, ROC curves,
feature maps of the convolution layers and occlusion maps for chosen galaxies (PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def training_curves(history: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [h["epoch"] for h in history]
    ax[0].plot(epochs, [h["train_loss"] for h in history], label="train (augmented)")
    ax[0].plot(epochs, [h["val_loss"] for h in history], label="validation (mean over sets)")
    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("tree loss"), ax[0].legend()
    for name in history[0]["val_loss_by_set"]:
        if name != "mean":
            ax[1].plot(epochs, [h["val_loss_by_set"][name] for h in history], label=name)
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("validation loss"), ax[1].legend(fontsize=7)
    return _save(fig, path)


def confusion(matrix: list[list[int]], labels: list[str], path: Path, title: str) -> Path:
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(m, cmap="Blues")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="black")
    ax.set_xticks(range(len(labels)), labels, rotation=30), ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted"), ax.set_ylabel("label"), ax.set_title(title, fontsize=9)
    return _save(fig, path)


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} AUC={auc:.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate"), ax.set_ylabel("true positive rate"), ax.legend(fontsize=7)
    return _save(fig, path)


def feature_maps(model: nn.Module, image: np.ndarray, path: Path, per_layer: int = 8) -> Path:
    """The rectified outputs of each convolution layer for one image (strongest channels first)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    maps: list[torch.Tensor] = []
    hooks = [c.register_forward_hook(lambda _m, _i, o: maps.append(o.detach())) for c in convs]
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(image[None]))
    for h in hooks:
        h.remove()
    rows = len(maps)
    fig, ax = plt.subplots(rows, per_layer + 1, figsize=(1.3 * (per_layer + 1), 1.3 * rows), squeeze=False)
    for r, m in enumerate(maps):
        ax[r, 0].imshow(np.clip(image.transpose(1, 2, 0), 0, 1)) if r == 0 else ax[r, 0].axis("off")
        act = torch.relu(m[0])
        strongest = act.mean(dim=(1, 2)).argsort(descending=True)[:per_layer]
        for k, ch in enumerate(strongest):
            ax[r, k + 1].imshow(act[ch].numpy(), cmap="magma")
        ax[r, 1].set_ylabel(f"conv {r + 1}\n{tuple(m.shape[1:])}", fontsize=6)
    for a in ax.flat:
        a.set_xticks([]), a.set_yticks([])
    return _save(fig, path)


def occlusion_map(score: Callable[[np.ndarray], np.ndarray], image: np.ndarray, patch: int = 8,
                  stride: int = 4) -> np.ndarray:
    """Drop in ``score`` when a grey patch hides each part of the image (positive = evidence)."""
    c, h, w = image.shape
    base = float(score(image[None])[0])
    batch, centres = [], []
    fill = np.median(image, axis=(1, 2), keepdims=True)
    for y in range(0, h - patch + 1, stride):
        for x in range(0, w - patch + 1, stride):
            occluded = image.copy()
            occluded[:, y:y + patch, x:x + patch] = fill
            batch.append(occluded)
            centres.append((y, x))
    drops = base - score(np.stack(batch))
    heat, count = np.zeros((h, w)), np.zeros((h, w))
    for (y, x), d in zip(centres, drops):
        heat[y:y + patch, x:x + patch] += d
        count[y:y + patch, x:x + patch] += 1
    return heat / np.maximum(count, 1)


def occlusion_panel(items: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> Path:
    """Rows of (title, image, occlusion heat map)."""
    fig, ax = plt.subplots(len(items), 2, figsize=(4.4, 2.2 * len(items)), squeeze=False)
    for r, (title, image, heat) in enumerate(items):
        ax[r, 0].imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
        ax[r, 0].set_title(title, fontsize=7)
        lim = max(np.abs(heat).max(), 1e-6)
        ax[r, 1].imshow(heat, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax[r, 1].set_title("score drop when hidden", fontsize=7)
    for a in ax.flat:
        a.set_xticks([]), a.set_yticks([])
    return _save(fig, path)


def mosaic(items: list[tuple[str, np.ndarray]], path: Path, columns: int = 6, title: str = "") -> Path:
    """A grid of ``(caption, (C, H, W) image)`` pairs, e.g. the confident mistakes of one set."""
    rows = max(1, int(np.ceil(len(items) / columns)))
    fig, ax = plt.subplots(rows, columns, figsize=(1.7 * columns, 1.9 * rows), squeeze=False)
    for a in ax.flat:
        a.axis("off")
    for a, (caption, image) in zip(ax.flat, items):
        a.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
        a.set_title(caption, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    return _save(fig, path)
