"""Captions of the procedural world: "a red cube" or "a red cube, front view", and their parser.

The view suffix is exactly :func:`dreamgen.prompts.view_prompt`'s, so the view-dependent prompts the trainer builds
are captions the embedded prior was trained on.
"""

from __future__ import annotations

import re

from dreamgen.cameras import VIEWS
from dreamgen.errors import PromptError
from dreamgen.prompts import view_prompt
from dreamgen.world.objects import COLOURS, SHAPES, check_colour, check_shape

ARTICLES = ("a", "an")
# Every word a caption can contain, in a fixed order (the embedded prior's tokenizer is built from it).
VOCABULARY: list[str] = [*ARTICLES, *COLOURS, *SHAPES, *VIEWS, "view"]

_FORM = "'[a|an] <colour> <object>[, <view> view]'"


def _vocabulary_hint() -> str:
    return (f"colours {', '.join(COLOURS)}; objects {', '.join(SHAPES)}; views {', '.join(VIEWS)}"
            " — use --guidance stable-diffusion for open-vocabulary prompts")


def caption(colour: str, shape: str, view: str | None = None) -> str:
    """("red", "cube", "front") -> "a red cube, front view"; view=None gives "a red cube"."""
    check_colour(colour)
    check_shape(shape)
    article = "an" if colour[0] in "aeiou" else "a"
    text = f"{article} {colour} {shape}"
    if view is None:
        return text
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; known views: {', '.join(VIEWS)}")
    return view_prompt(text, view)


def parse_caption(text: str) -> tuple[str, str, str | None]:
    """Inverse of :func:`caption`: -> (colour, shape, view or None). Case- and whitespace-insensitive, the article
    is optional and a trailing period is ignored.

    Raises :class:`PromptError` (one line, listing the vocabulary) for unknown words or a malformed caption.
    """
    parts = [part.split() for part in text.strip().lower().rstrip(".").split(",")]
    for word in (w for part in parts for w in part):
        if word not in VOCABULARY:
            raise PromptError(f"unknown word {word!r} for the embedded prior; it knows: {_vocabulary_hint()}")
    obj = parts[0]
    if obj and obj[0] in ARTICLES:
        obj = obj[1:]
    view: str | None = None
    if len(parts) == 2 and len(parts[1]) == 2 and parts[1][0] in VIEWS and parts[1][1] == "view":
        view = parts[1][0]
    elif len(parts) != 1:
        parts = []  # malformed view suffix
    if not parts or len(obj) != 2 or obj[0] not in COLOURS or obj[1] not in SHAPES:
        shown = re.sub(r"\s+", " ", text.strip())
        raise PromptError(f"cannot read {shown!r} as a caption of the embedded prior: expected {_FORM}; it knows: "
                          f"{_vocabulary_hint()}")
    return obj[0], obj[1], view
