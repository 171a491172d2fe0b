"""Training and evaluation for SegRet: datasets and augmentation, metrics, Accelerate scripts.

Modules: ``presets`` (the benchmarks' label maps, classes, scales and Hub ids; imports nothing of the project's),
``data`` (loading, label mapping, the resumable training order), ``transforms`` (MMSegmentation-equivalent
augmentation), ``metrics`` (streaming, distributed-exact mIoU), ``evaluation`` (evaluation entry point), ``train``
(the training loop) with ``recipe`` (its arguments), ``checkpoints`` and ``run_folder`` (the run's bookkeeping),
``model_card`` and ``publish`` (cards rendered from ``model_cards/template.md``, Hub upload). Each tool runs as
``python training/<tool>.py`` or ``python -m training.<tool>``. Submodules are imported on demand, so
``import training`` stays light.
"""

import logging
import os

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """Console logging for the command-line scripts: INFO on the main process (rank 0), warnings on the others."""
    main_process = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"
    logging.basicConfig(
        format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S", level=logging.INFO if main_process else logging.WARNING
    )
