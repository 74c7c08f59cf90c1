"""`python -m fundus_search ...` is the `fundus-search` command."""

from fundus_search.search.cli.main import entry_point

if __name__ == "__main__":
    entry_point()
