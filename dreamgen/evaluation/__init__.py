"""Scoring results against the procedural world's ground truth: a run (its NeRF or DMTet surface, and its exported
mesh) and the league of losses × prompts × seeds; probing what the guidance asks of a run (:mod:`.probe`)."""

from dreamgen.evaluation.mesh import evaluate_mesh
from dreamgen.evaluation.run import evaluate_run

__all__ = ["evaluate_mesh", "evaluate_run"]
