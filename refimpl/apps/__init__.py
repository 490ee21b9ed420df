"""Applications on top of the library: the command line (``cli``), ``verify`` against
transformers and sentence-transformers, ``explain`` pages, the search cache."""
