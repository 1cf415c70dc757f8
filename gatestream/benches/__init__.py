"""Benches of issue 23's figures that need a dataset of their own: ``bench storage`` and
``bench queries`` (the generated dataset, the dashboard queries, the figures)."""
