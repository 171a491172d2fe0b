"""Training and evaluation for SegRet: datasets and augmentation, metrics, Accelerate scripts.

Modules: ``data`` (dataset presets, loading, label mapping), ``transforms`` (MMSegmentation-equivalent augmentation),
``metrics`` (streaming, distributed-exact mIoU), ``evaluate`` (evaluation entry point). Submodules are imported on
demand, so ``import training`` stays light.
"""
