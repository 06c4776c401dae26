"""ikd: interactive knowledge distillation as an MLOps pipeline.

prepare -> adapt -> distill -> evaluate -> export, one library behind the CLI, DVC stages and
Kubeflow components. See ``ikd.steps`` for the step functions and ``ikd.config`` for the config.
"""

__version__ = "0.1.0"
