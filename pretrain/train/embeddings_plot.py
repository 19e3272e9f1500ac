"""PCA scatter plots of learned features next to raw pixels, coloured by class (the demos' picture of a run)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor


def plot_embeddings(features: Tensor, images: Tensor, labels: Tensor, path: Path) -> Path:
    """Two PCA scatter plots side by side: learned features and raw pixels, coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    from dinolab.pretrain.data.fashion_mnist import CLASSES

    pixels = images.reshape(images.shape[0], -1).float().numpy()
    panels = [("pretrained features", features.numpy()), ("raw pixels", pixels)]
    figure, axes = plt.subplots(1, 2, figsize=(11, 5))
    for axis, (title, values) in zip(axes, panels):
        points = PCA(n_components=2, random_state=0).fit_transform(values)
        scatter = axis.scatter(points[:, 0], points[:, 1], c=labels.numpy(), cmap="tab10", s=3)
        axis.set_title(f"Fashion-MNIST test, PCA of {title}")
        axis.set_xticks([]), axis.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=scatter.cmap(scatter.norm(i))) for i in range(10)]
    figure.legend(handles, CLASSES, loc="lower center", ncol=5, fontsize=8)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
