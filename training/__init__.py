"""Training and evaluation for SegRet: datasets and augmentation, metrics, Accelerate scripts.

Modules: ``presets`` (the benchmarks' label maps, classes, scales and Hub ids; imports nothing of the project's),
``data`` (loading, label mapping), ``transforms`` (MMSegmentation-equivalent augmentation), ``metrics`` (streaming,
distributed-exact mIoU), ``evaluate`` (evaluation entry point), ``model_card`` and ``publish`` (cards rendered from
``model_cards/template.md``, Hub upload). Submodules are imported on demand, so ``import training`` stays light.
"""
