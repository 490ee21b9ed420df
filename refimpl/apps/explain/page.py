"""``refimpl explain``, the page: the figures as data URIs in one HTML file that opens offline and fetches nothing."""

from __future__ import annotations

import base64
import html
import json

import numpy as np

from refimpl.apps.explain.analysis import SentenceView, pair_contributions

STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; line-height: 1.45; color: #222; }
code, .token { font-family: monospace; }
.token { display: inline-block; border: 1px solid #bbb; border-radius: 3px; padding: 0 4px; margin: 2px;
         background: #f6f6f6; }
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
    tokens = "".join(
        f'<span class="token{" special" if i in special else ""}">{e(t)}</span>'
        for i, t in zip(view.ids, view.token_texts)
    )
    cut = view.tokens_before_truncation - len(view.token_texts)
    parts = [
        f"<h2>Sentence {s}</h2>",
        f"<p>Text: <code>{e(view.text)}</code></p>",
        f"<p>After the tokenizer's normalizer (lowercasing and the like): <code>{e(view.normalized)}</code></p>",
        f"<p>{len(view.token_texts)} tokens, special tokens included"
        + (f"; <strong>{cut} more were cut</strong> by truncation to max_seq_length {max_length}" if cut > 0 else "")
        + ":</p>",
        f"<p>{tokens}</p>",
        "<h3>Attention, layer by layer (click a layer to enlarge it)</h3>",
    ]
    for name in sorted(n for n in pngs if n.startswith(f"s{s}-attention-layer")):
        anchor = name.removesuffix(".png")
        parts.append(f'<a href="#{anchor}">{_img(pngs[name], anchor, "layer")}</a>')
        parts.append(f'<a class="zoom" id="{anchor}" href="#close">{_img(pngs[name], anchor + " enlarged")}</a>')
    head = next(n for n in pngs if n.startswith(f"s{s}-head-"))
    parts += [
        f"<h3>One head, enlarged ({e(head.removesuffix('.png').split('-', 2)[2])})</h3>",
        _img(pngs[head], head),
        "<h3>How each layer moves the tokens</h3>",
        "<p>Left: each token's hidden-state norm. Right: its cosine to the final sentence vector.</p>",
        _img(pngs[f"s{s}-layers.png"], "layers"),
        "<h3>How pooling weighs the tokens</h3>",
        _img(pngs[f"s{s}-pooling.png"], "pooling"),
    ]
    return parts


def html_page(model, views: list[SentenceView], pngs: dict[str, bytes]) -> str:
    """The page: tokens, attention figures, layers, pooling, and for two sentences their similarity."""
    e = html.escape
    special = {i for i, token in model.text_tokenizer.backend.get_added_tokens_decoder().items() if token.special}
    body = [
        f"<h1>refimpl explain</h1><p>Model <code>{e(str(model.model_dir))}</code>: {model.config.model_type}, "
        f"{model.config.num_hidden_layers} layers, {model.config.num_attention_heads} heads, pooling "
        f"{e('+'.join(model.pooling_config.modes))}{', normalized' if model.normalize else ''}.</p>"
    ]
    for s, view in enumerate(views, start=1):
        body += _sentence_section(s, view, pngs, special, model.max_seq_length)
    if len(views) == 2:
        cosine = float(
            views[0].embedding
            @ views[1].embedding
            / np.linalg.norm(views[0].embedding)
            / np.linalg.norm(views[1].embedding)
        )
        body.append(
            f"<h2>The two sentences</h2><p>Cosine similarity of their vectors: <strong>{cosine:.4f}</strong></p>"
        )
        shares = pair_contributions(*views, model.pooling_config.modes)
        if shares is not None and "pairs.png" in pngs:
            top = np.dstack(np.unravel_index(np.argsort(-shares, axis=None)[:10], shares.shape))[0]
            rows = "".join(
                f"<tr><td>{e(views[0].token_texts[i])}</td><td>{e(views[1].token_texts[j])}</td>"
                f"<td>{shares[i, j]:+.4f}</td></tr>"
                for i, j in top
            )
            body += [
                "<p>With mean pooling the cosine is a sum over token pairs: "
                "w<sub>i</sub> w<sub>j</sub> a<sub>i</sub>&middot;b<sub>j</sub> / (|u| |v|). "
                "The pairs that add most:</p>",
                f"<table><tr><th>sentence 1</th><th>sentence 2</th><th>share</th></tr>{rows}</table>",
                _img(pngs["pairs.png"], "pairs"),
            ]
    data = {
        "sentences": [
            {"text": v.text, "tokens": v.token_texts, "embedding": [float(x) for x in v.embedding]} for v in views
        ]
    }
    # every "<" escaped: no "</script>" or "<!--" in a sentence can end the data block or open a comment
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    body.append(f'<script type="application/json" id="refimpl-data">{payload}</script>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>refimpl explain</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
