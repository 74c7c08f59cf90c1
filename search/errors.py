"""Errors of the search engine that are not about an input file (those live where the file is read)."""

from fundus_search.vocabulary import UserError


class SearchError(UserError):
    """A search or evaluation folder, name or run cannot be used as asked; the message says why."""


class ClusterError(UserError):
    """No Ray cluster or Jobs API answers where the user pointed, or it refused us."""
