"""The procedural ground-truth world: exact objects, captions, a fast renderer, the prior's dataset and metrics."""

from dreamgen.world.captions import VOCABULARY, caption, parse_caption
from dreamgen.world.dataset import WorldDataset, make_dataset
from dreamgen.world.metrics import (Alignment, evaluate, foreground_colour_error, front_feature_score, janus_score,
                                    silhouette_iou, transform_cameras, volumetric_iou)
from dreamgen.world.objects import COLOURS, FRONT_FEATURE_SHAPES, SHAPES, VARIANTS, albedo, occupancy, sdf
from dreamgen.world.render import DEFAULT_BACKGROUND, render

__all__ = [
    "COLOURS", "DEFAULT_BACKGROUND", "FRONT_FEATURE_SHAPES", "SHAPES", "VARIANTS", "VOCABULARY", "Alignment",
    "WorldDataset", "albedo", "caption", "evaluate", "foreground_colour_error", "front_feature_score", "janus_score",
    "make_dataset", "occupancy", "parse_caption", "render", "sdf", "silhouette_iou", "transform_cameras",
    "volumetric_iou",
]
