"""playworld: learn playable worlds from unlabeled video (Genie, arXiv 2402.15391)."""

__version__ = "0.1.0"
