"""The larger subcommands of ``fastgru`` (fastgru/cli.py builds the parser and runs them):
check, bench and score, over the helpers they share in ``common``."""
