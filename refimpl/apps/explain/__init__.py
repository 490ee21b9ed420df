"""``refimpl explain``: what the model does with one or two sentences, as a self-contained HTML page
(or PNG files): ``analysis`` computes the numbers with NumPy, ``figures`` draws them, ``page`` lays them out."""

from refimpl.apps.explain.analysis import SentenceView, analyse, pair_contributions
from refimpl.apps.explain.figures import MatplotlibMissing, figures
from refimpl.apps.explain.page import html_page

__all__ = ["MatplotlibMissing", "SentenceView", "analyse", "figures", "html_page", "pair_contributions"]
