"""Offsets and forget requests: the saved artifact (artifact) and the versioned registry
(registry). Imports only the method.
"""
