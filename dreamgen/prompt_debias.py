"""Prompt debiasing of D-SDS (Hong et al., "Debiasing Scores and Prompts of 2D Diffusion for View-consistent
Text-to-3D Generation", NeurIPS 2023, arXiv 2303.15413; docs/losses.md), run once before training.

A masked language model estimates which view a prompt implies. For a text P, p(v | P) is the model's probability of
the view word v at the mask of "This image is depicting a [MASK] view of P", renormalised over the views. For each
word i of the prompt (whitespace-separated) and each view v:

    r_v(i) = p(v | P) / lerp(p(v | P without word i), p(v | P), 1/2)

and word i is dropped from view v's prompt when r_v(i) < threshold (0.95): removing the word raises the view's
probability by more than about 10%, so the word contradicts that view (a "face" seen from the back). Each view's
prompt is the ordered subset of words it keeps; a view that would keep no word keeps the whole prompt.

The paper uses "bert-base-uncased"; any ``AutoModelForMaskedLM`` whose vocabulary holds each view word as a single
token works, loaded by name or local path.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from dreamgen.cameras import VIEWS
from dreamgen.errors import ConfigError

QUERY = "This image is depicting a {mask} view of {prompt}"


@torch.no_grad()
def view_probabilities(model, tokenizer, prompt: str, view_ids: Sequence[int]) -> Tensor:
    """[V] probabilities of the view tokens at the query's mask, renormalised to sum to 1."""
    enc = tokenizer(QUERY.format(mask=tokenizer.mask_token, prompt=prompt), return_tensors="pt")
    mask_pos = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0]
    probs = model(**enc).logits[0, mask_pos].softmax(-1)[list(view_ids)]
    return probs / probs.sum()


def debias_words(prompt: str, views: Sequence[str], probs: Callable[[str], Tensor],
                 threshold: float = 0.95) -> dict[str, str]:
    """Per-view prompts from a view-probability function ``probs(text) -> [V]`` (the rule in the module docstring)."""
    words = prompt.split()
    full = probs(" ".join(words))
    keep = torch.ones(len(views), len(words), dtype=torch.bool)
    for i in range(len(words)):
        without = probs(" ".join(words[:i] + words[i + 1:]))
        ratio = full / torch.lerp(without, full, 0.5)
        keep[:, i] = ratio >= threshold
    return {v: " ".join(w for w, k in zip(words, keep[j]) if k) or " ".join(words) for j, v in enumerate(views)}


def debias_view_prompts(prompt: str, views: Sequence[str] = VIEWS, model_name_or_path: str = "bert-base-uncased",
                        threshold: float = 0.95) -> dict[str, str]:
    """view -> debiased prompt for that view, using a masked language model loaded with transformers."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        model = AutoModelForMaskedLM.from_pretrained(model_name_or_path).eval()
    except OSError as e:
        raise ConfigError(f"cannot load the prompt-debiasing model {model_name_or_path!r}: {e}") from e
    view_ids = []
    for v in views:
        ids = tokenizer(v, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise ConfigError(f"view word {v!r} is not a single token of {model_name_or_path!r}")
        view_ids.append(ids[0])
    return debias_words(prompt, views, lambda text: view_probabilities(model, tokenizer, text, view_ids), threshold)
