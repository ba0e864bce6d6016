"""Benchmarks of autostep end to end; ``.venv/bin/python bench/run.py`` runs them."""
