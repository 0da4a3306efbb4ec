"""Worlds: what a session works with — the Lab, the toy world, SmolLM2, QA record files,
model loading.
"""
