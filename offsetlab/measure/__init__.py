"""Measurement: metrics as pure functions (metrics), reports of a model on QA splits
(evaluate) and per-request tables (requests). Imports only the method.
"""
