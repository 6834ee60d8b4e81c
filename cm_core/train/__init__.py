"""Training: EDM teachers (denoising score matching), consistency distillation (CD) and
consistency training (CT), Song et al. 2023, Algorithms 2 and 3.

``python -m cm_core train edm|cd|ct --data digits --out DIR`` drives :func:`run_training`.
"""
from .config import TrainConfig
from .loop import run_training

__all__ = ["TrainConfig", "run_training"]
