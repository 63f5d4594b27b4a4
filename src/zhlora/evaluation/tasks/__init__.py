"""Small per-benchmark hooks: the pieces of a spec that need a Python function.

Specs (:mod:`zhlora.evaluation.specs`) name these hooks; the engine calls them. Nothing here
runs a model.
"""
