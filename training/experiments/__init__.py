"""One-off research tools (cross-validation, ablation, probes, paired comparisons, survey shifts).

Each is run as ``python -m training.experiments.NAME``. They may import the product (``training``),
never the reverse: nothing that trains, exports or ships a model depends on them.
"""
