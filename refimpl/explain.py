"""``refimpl explain``: what the model does with one or two sentences, as a self-contained HTML page.

The numbers come from one forward pass of the model's own engine, the one ``encode`` runs, so the
sentence vector on the page is ``encode``'s (a test checks this). ``analyse`` computes them with
NumPy; ``figures`` draws them with matplotlib (the optional extra ``refimpl[viz]``); ``html_page``
puts the figures in a page as data URIs, so the page opens offline and fetches nothing.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
from dataclasses import dataclass, field

import numpy as np

from . import pooling as pooling_ops
from .errors import RefimplError

INSTALL = 'refimpl explain draws its figures with matplotlib: pip install "refimpl[viz]"'
# fonts with Hangul that matplotlib may find on the system; koreanize-matplotlib (in refimpl[viz]) ships NanumGothic
HANGUL_FONTS = ("NanumGothic", "Noto Sans CJK KR", "Noto Sans KR", "Malgun Gothic", "AppleGothic", "UnDotum", "Baekmuk Gulim")
MEAN_LIKE = ("mean", "mean_sqrt_len_tokens", "weightedmean")


class MatplotlibMissing(RefimplError):
    """matplotlib is not installed."""


@dataclass
class SentenceView:
    text: str
    normalized: str  # what the tokenizer's normalizer makes of it (lowercasing shown)
    tokens: list[str]
    ids: list[int]
    tokens_before_truncation: int
    hidden_states: list  # L + 1 arrays [T, H]
    attentions: list  # L arrays [nh, T, T]
    embedding: np.ndarray  # [D], what encode returns
    pooled: np.ndarray  # [D] before Normalize
    pooling_weights: np.ndarray  # [T]: each token's weight in the (first) pooling mode
    norms: np.ndarray = field(init=False)  # [L + 1, T]
    cosines: np.ndarray = field(init=False)  # [L + 1, T]: each token's cosine to the sentence vector

    def __post_init__(self):
        hidden = np.stack(self.hidden_states)  # [L + 1, T, H]
        self.norms = np.linalg.norm(hidden, axis=-1)
        direction = self.pooled[: hidden.shape[-1]]
        self.cosines = hidden @ direction / np.maximum(self.norms * np.linalg.norm(direction), 1e-12)

    @property
    def contributions(self) -> np.ndarray:
        """[T]: each token's share of the pooled vector, (w_t h_t . p) / |p|^2 (sums to 1 for mean pooling)."""
        last, p = self.hidden_states[-1], self.pooled[: self.hidden_states[-1].shape[-1]]
        return (self.pooling_weights[:, None] * last) @ p / max(float(p @ p), 1e-12)


def pooling_weights(modes, tokens: np.ndarray) -> np.ndarray:
    """[T] weights with which the first pooling mode combines the tokens (max: share of dimensions won)."""
    T = tokens.shape[0]
    mode = modes[0]
    if mode == "mean":
        return np.full(T, 1.0 / T)
    if mode == "mean_sqrt_len_tokens":
        return np.full(T, 1.0 / np.sqrt(T))
    if mode == "weightedmean":
        positions = np.arange(1, T + 1, dtype=np.float64)
        return positions / positions.sum()
    if mode == "cls":
        return np.eye(T)[0]
    if mode == "lasttoken":
        return np.eye(T)[-1]
    return np.bincount(tokens.argmax(axis=0), minlength=T) / tokens.shape[1]  # max


def analyse(model, text: str) -> SentenceView:
    """One sentence through the model: tokens, every layer, every attention, the pooled vector."""
    tokenizer = model._tokenizer
    features = model.tokenize([text])
    out = model.forward(features, output_hidden_states=True, output_attentions=True)
    hidden = [h[0] for h in out["hidden_states"]]
    attentions = [layer[0] for layer in out["attentions"]]  # [nh, T, T]: one sentence, no padding
    pooled = pooling_ops.pool_padded(out["token_embeddings"], features["attention_mask"], model.pooling_config.modes)[0]
    normalizer = tokenizer.backend.normalizer
    ids = features["input_ids"][0].tolist()
    return SentenceView(
        text=text, normalized=normalizer.normalize_str(text) if normalizer is not None else text,
        tokens=[tokenizer.backend.id_to_token(i) or f"<{i}>" for i in ids], ids=ids,
        tokens_before_truncation=model.token_count(text), hidden_states=hidden, attentions=attentions,
        embedding=out["sentence_embedding"][0], pooled=pooled,
        pooling_weights=pooling_weights(model.pooling_config.modes, hidden[-1]),
    )


def pair_contributions(first: SentenceView, second: SentenceView, modes) -> np.ndarray | None:
    """[T1, T2]: token pair (i, j)'s share of the cosine of the two pooled vectors u = sum w_i a_i and
    v = sum w_j b_j: w_i w_j (a_i . b_j) / (|u| |v|); the shares sum to the cosine. None when the
    pooled vector is not such a weighted sum (max pooling, several modes)."""
    if len(modes) != 1 or modes[0] == "max":
        return None
    a, b = first.hidden_states[-1], second.hidden_states[-1]
    u, v = first.pooled, second.pooled
    products = (first.pooling_weights[:, None] * a) @ (second.pooling_weights[:, None] * b).T
    return products / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-12)


# --- figures ----------------------------------------------------------------------------------


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
    _labels(axis, view.tokens)
    axis.set_xlabel("key (attended to)")
    axis.set_ylabel("query")
    axis.set_title(f"layer {layer + 1}, head {head}")
    figure.colorbar(image, ax=axis, fraction=0.046)
    return _png(figure)


def layers_figure(view: SentenceView) -> bytes:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(view.hidden_states) + 1.6))
    names = ["embeddings"] + [f"layer {i}" for i in range(1, len(view.hidden_states))]
    for axis, values, title, cmap in ((axes[0], view.norms, "hidden-state norm |h|", "magma"),
                                      (axes[1], view.cosines, "cosine to the sentence vector", "coolwarm")):
        image = axis.imshow(values, aspect="auto", cmap=cmap, **({"vmin": -1, "vmax": 1} if cmap == "coolwarm" else {}))
        _labels(axis, view.tokens, rows=False)
        axis.set_yticks(range(len(names)), names, fontsize=7)
        axis.set_title(title, fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046)
    return _png(figure)


def pooling_figure(view: SentenceView, modes) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(5, 0.3 * len(view.tokens) + 2), 2.6))
    x = np.arange(len(view.tokens))
    axis.bar(x - 0.2, view.pooling_weights, width=0.4, label=f"weight in {modes[0]} pooling")
    axis.bar(x + 0.2, view.contributions, width=0.4, label="share of the pooled vector (w h . p / |p|^2)")
    _labels(axis, view.tokens, rows=False)
    axis.axhline(0, color="black", linewidth=0.5)
    axis.legend(fontsize=7)
    return _png(figure)


def pairs_figure(first: SentenceView, second: SentenceView, shares: np.ndarray) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(4, 0.28 * len(second.tokens) + 2), max(3, 0.28 * len(first.tokens) + 1.5)))
    limit = float(np.abs(shares).max()) or 1.0
    image = axis.imshow(shares, cmap="coolwarm", vmin=-limit, vmax=limit)
    _labels(axis, first.tokens, columns=False)
    _labels(axis, second.tokens, rows=False)
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


# --- the page ---------------------------------------------------------------------------------------

STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; line-height: 1.45; color: #222; }
code, .token { font-family: monospace; }
.token { display: inline-block; border: 1px solid #bbb; border-radius: 3px; padding: 0 4px; margin: 2px; background: #f6f6f6; }
.special { background: #e3ecff; }
img { max-width: 100%; }
.layer { cursor: zoom-in; }
.zoom { display: none; position: fixed; inset: 0; background: rgba(0, 0, 0, 0.85); padding: 2em; text-align: center; }
.zoom:target { display: block; }
.zoom img { max-height: 90vh; background: white; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 2px 8px; }
"""


def _img(data: bytes, alt: str, css_class: str = "") -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _sentence_section(s: int, view: SentenceView, pngs: dict, special: set, max_length: int) -> list[str]:
    e = html.escape
    tokens = "".join(f'<span class="token{" special" if i in special else ""}">{e(t)}</span>' for i, t in zip(view.ids, view.tokens))
    cut = view.tokens_before_truncation - len(view.tokens)
    parts = [
        f"<h2>Sentence {s}</h2>",
        f"<p>Text: <code>{e(view.text)}</code></p>",
        f"<p>After the tokenizer's normalizer (lowercasing and the like): <code>{e(view.normalized)}</code></p>",
        f"<p>{len(view.tokens)} tokens, special tokens included"
        + (f"; <strong>{cut} more were cut</strong> by truncation to max_seq_length {max_length}" if cut > 0 else "") + ":</p>",
        f"<p>{tokens}</p>",
        "<h3>Attention, layer by layer (click a layer to enlarge it)</h3>",
    ]
    for name in sorted(n for n in pngs if n.startswith(f"s{s}-attention-layer")):
        anchor = name.removesuffix(".png")
        parts.append(f'<a href="#{anchor}">{_img(pngs[name], anchor, "layer")}</a>')
        parts.append(f'<a class="zoom" id="{anchor}" href="#close">{_img(pngs[name], anchor + " enlarged")}</a>')
    head = next(n for n in pngs if n.startswith(f"s{s}-head-"))
    parts += [f"<h3>One head, enlarged ({e(head.removesuffix('.png').split('-', 2)[2])})</h3>", _img(pngs[head], head),
              "<h3>How each layer moves the tokens</h3>",
              "<p>Left: each token's hidden-state norm. Right: its cosine to the final sentence vector.</p>",
              _img(pngs[f"s{s}-layers.png"], "layers"),
              "<h3>How pooling weighs the tokens</h3>", _img(pngs[f"s{s}-pooling.png"], "pooling")]
    return parts


def html_page(model, views: list[SentenceView], pngs: dict[str, bytes]) -> str:
    """The page: tokens, attention figures, layers, pooling, and for two sentences their similarity."""
    e = html.escape
    special = {i for i, token in model._tokenizer.backend.get_added_tokens_decoder().items() if token.special}
    body = [f"<h1>refimpl explain</h1><p>Model <code>{e(str(model.model_dir))}</code>: {model.config.model_type}, "
            f"{model.config.num_hidden_layers} layers, {model.config.num_attention_heads} heads, pooling "
            f"{e('+'.join(model.pooling_config.modes))}{', normalized' if model.normalize else ''}.</p>"]
    for s, view in enumerate(views, start=1):
        body += _sentence_section(s, view, pngs, special, model.max_seq_length)
    if len(views) == 2:
        cosine = float(views[0].embedding @ views[1].embedding / np.linalg.norm(views[0].embedding) / np.linalg.norm(views[1].embedding))
        body.append(f"<h2>The two sentences</h2><p>Cosine similarity of their vectors: <strong>{cosine:.4f}</strong></p>")
        shares = pair_contributions(*views, model.pooling_config.modes)
        if shares is not None and "pairs.png" in pngs:
            top = np.dstack(np.unravel_index(np.argsort(-shares, axis=None)[:10], shares.shape))[0]
            rows = "".join(f"<tr><td>{e(views[0].tokens[i])}</td><td>{e(views[1].tokens[j])}</td><td>{shares[i, j]:+.4f}</td></tr>"
                           for i, j in top)
            body += ["<p>With mean pooling the cosine is a sum over token pairs: "
                     "w<sub>i</sub> w<sub>j</sub> a<sub>i</sub>&middot;b<sub>j</sub> / (|u| |v|). The pairs that add most:</p>",
                     f"<table><tr><th>sentence 1</th><th>sentence 2</th><th>share</th></tr>{rows}</table>", _img(pngs["pairs.png"], "pairs")]
    data = {"sentences": [{"text": v.text, "tokens": v.tokens, "embedding": [float(x) for x in v.embedding]} for v in views]}
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # cannot close the script element
    body.append(f'<script type="application/json" id="refimpl-data">{payload}</script>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>refimpl explain</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
