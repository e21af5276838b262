"""Sweeps: sweep specs, Ray Tune with Optuna or grid search, reports over sweep directories.

Only this package (and ``raydt/train/worker.py``) imports Ray and Optuna; spec parsing and
reports do not need them.
"""
