"""`python -m fundus_search ...` is the `fundus-search` command."""

from fundus_search.search.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
