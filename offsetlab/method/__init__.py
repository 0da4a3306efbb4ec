"""The method, top to bottom: where scores come from (sources, remote), how they fuse
(fusion, trace), what an offset is trained to do (objectives, train), and the small
records it needs (prompts, fingerprints). Imports nothing else of offsetlab.
"""
