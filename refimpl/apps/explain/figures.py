"""``refimpl explain``, the figures: matplotlib (the optional extra ``refimpl[viz]``) draws the analysis as PNGs."""

from __future__ import annotations

import functools
import io

import numpy as np

from refimpl.apps.explain.analysis import SentenceView, pair_contributions
from refimpl.errors import RefimplError

INSTALL = 'refimpl explain draws its figures with matplotlib: pip install "refimpl[viz]"'
# fonts with Hangul that matplotlib may find on the system; koreanize-matplotlib (in refimpl[viz]) ships NanumGothic
HANGUL_FONTS = (
    "NanumGothic",
    "Noto Sans CJK KR",
    "Noto Sans KR",
    "Malgun Gothic",
    "AppleGothic",
    "UnDotum",
    "Baekmuk Gulim",
)


class MatplotlibMissing(RefimplError):
    """matplotlib is not installed."""


@functools.cache
def _pyplot():
    """matplotlib's pyplot on the Agg backend, with a Hangul font when one is installed (set up once)."""
    try:
        import matplotlib
    except ImportError:
        raise MatplotlibMissing(INSTALL) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    try:  # registers NanumGothic with matplotlib
        import koreanize_matplotlib  # noqa: F401
    except ImportError:
        pass
    available = {font.name for font in font_manager.fontManager.ttflist}
    hangul = [name for name in HANGUL_FONTS if name in available]
    plt.rcParams["font.family"] = hangul[:1] + ["DejaVu Sans"]  # DejaVu for the Latin, symbols and digits
    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _labels(axis, tokens, rows=True, columns=True, size=7):
    if len(tokens) > 48:  # too many to read: leave the axes unlabelled
        return
    if columns:
        axis.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=size)
    if rows:
        axis.set_yticks(range(len(tokens)), tokens, fontsize=size)


def layer_figure(view: SentenceView, layer: int) -> bytes:
    plt = _pyplot()
    heads = view.attentions[layer].shape[0]
    figure, axes = plt.subplots(1, heads, figsize=(1.6 * heads, 1.9), squeeze=False)
    for h, axis in enumerate(axes[0]):
        axis.imshow(view.attentions[layer][h], cmap="viridis", vmin=0, vmax=1)
        axis.set_title(f"head {h}", fontsize=7)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"layer {layer + 1}: attention (rows: queries, columns: keys)", fontsize=8)
    return _png(figure)


def head_figure(view: SentenceView, layer: int, head: int) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 5.4))
    image = axis.imshow(view.attentions[layer][head], cmap="viridis", vmin=0, vmax=1)
    _labels(axis, view.token_texts)
    axis.set_xlabel("key (attended to)")
    axis.set_ylabel("query")
    axis.set_title(f"layer {layer + 1}, head {head}")
    figure.colorbar(image, ax=axis, fraction=0.046)
    return _png(figure)


def layers_figure(view: SentenceView) -> bytes:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(view.hidden_states) + 1.6))
    names = ["embeddings"] + [f"layer {i}" for i in range(1, len(view.hidden_states))]
    for axis, values, title, cmap in (
        (axes[0], view.norms, "hidden-state norm |h|", "magma"),
        (axes[1], view.cosines, "cosine to the sentence vector", "coolwarm"),
    ):
        image = axis.imshow(values, aspect="auto", cmap=cmap, **({"vmin": -1, "vmax": 1} if cmap == "coolwarm" else {}))
        _labels(axis, view.token_texts, rows=False)
        axis.set_yticks(range(len(names)), names, fontsize=7)
        axis.set_title(title, fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046)
    return _png(figure)


def pooling_figure(view: SentenceView, modes) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(5, 0.3 * len(view.token_texts) + 2), 2.6))
    x = np.arange(len(view.token_texts))
    axis.bar(x - 0.2, view.pooling_weights, width=0.4, label=f"weight in {modes[0]} pooling")
    axis.bar(x + 0.2, view.contributions, width=0.4, label="share of the pooled vector (w h . p / |p|^2)")
    _labels(axis, view.token_texts, rows=False)
    axis.axhline(0, color="black", linewidth=0.5)
    axis.legend(fontsize=7)
    return _png(figure)


def pairs_figure(first: SentenceView, second: SentenceView, shares: np.ndarray) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(
        figsize=(max(4, 0.28 * len(second.token_texts) + 2), max(3, 0.28 * len(first.token_texts) + 1.5))
    )
    limit = float(np.abs(shares).max()) or 1.0
    image = axis.imshow(shares, cmap="coolwarm", vmin=-limit, vmax=limit)
    _labels(axis, first.token_texts, columns=False)
    _labels(axis, second.token_texts, rows=False)
    axis.set_title("each token pair's share of the cosine", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.046)
    return _png(figure)


def figures(views: list[SentenceView], modes, head: tuple[int, int] | None = None) -> dict[str, bytes]:
    """Every figure of the page, by file name: per sentence, one attention figure per layer, the
    enlarged head, the layers, the pooling; for two sentences, the token-pair shares."""
    out = {}
    for s, view in enumerate(views, start=1):
        layers = len(view.attentions)
        for layer in range(layers):
            out[f"s{s}-attention-layer{layer + 1:02d}.png"] = layer_figure(view, layer)
        chosen_layer, chosen_head = head if head is not None else (layers - 1, 0)
        out[f"s{s}-head-l{chosen_layer + 1}-h{chosen_head}.png"] = head_figure(view, chosen_layer, chosen_head)
        out[f"s{s}-layers.png"] = layers_figure(view)
        out[f"s{s}-pooling.png"] = pooling_figure(view, modes)
    if len(views) == 2:
        shares = pair_contributions(*views, modes)
        if shares is not None:
            out["pairs.png"] = pairs_figure(views[0], views[1], shares)
    return out
