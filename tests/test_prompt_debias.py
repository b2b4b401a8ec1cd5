"""D-SDS prompt debiasing with a tiny random BERT built here (no downloads) and with a controlled probability."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizer

import dreamgen.prompt_debias as pd
from dreamgen.cameras import VIEWS
from dreamgen.errors import ConfigError

PROMPT = "a red cube with a smiling face"
WORDS = ["this", "image", "is", "depicting", "a", "view", "of", *VIEWS, "red", "cube", "with", "smiling", "face"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertForMaskedLM(config).save_pretrained(path)
    return str(path)


def is_ordered_subset(sub: list[str], full: list[str]) -> bool:
    it = iter(full)
    return all(w in it for w in sub)


def test_random_bert_gives_ordered_subsets_for_every_view(tiny_bert):
    out = pd.debias_view_prompts(PROMPT, VIEWS, tiny_bert)
    assert list(out) == list(VIEWS)
    assert all(p and is_ordered_subset(p.split(), PROMPT.split()) for p in out.values())
    assert out == pd.debias_view_prompts(PROMPT, VIEWS, tiny_bert)  # deterministic (eval mode)
    assert set(pd.debias_view_prompts(PROMPT, VIEWS, tiny_bert, threshold=0.0).values()) == {PROMPT}


def test_view_probabilities_are_a_distribution_over_views(tiny_bert):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModelForMaskedLM.from_pretrained(tiny_bert)
    ids = [tok.convert_tokens_to_ids(v) for v in VIEWS]
    p = pd.view_probabilities(model.eval(), tok, PROMPT, ids)
    assert p.shape == (len(VIEWS),) and (p > 0).all()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))
    assert not torch.allclose(p, pd.view_probabilities(model, tok, "a red cube", ids))


def test_word_whose_removal_raises_a_view_strongly_is_dropped_from_that_view(tiny_bert, monkeypatch):
    """With "face" the front view has p = 0.7 and the others 0.1; without it all are 0.25. Front keeps the word
    (r = 0.7/0.475 ≈ 1.47); the others drop it (r = 0.1/0.175 ≈ 0.57 < 0.95); no other word moves p (r = 1)."""
    def fake(model, tokenizer, prompt, view_ids):
        assert len(view_ids) == len(VIEWS)
        return torch.tensor([0.7, 0.1, 0.1, 0.1]) if "face" in prompt.split() else torch.full((4,), 0.25)

    monkeypatch.setattr(pd, "view_probabilities", fake)
    out = pd.debias_view_prompts(PROMPT, VIEWS, tiny_bert)
    assert VIEWS[0] == "front"
    assert out["front"] == PROMPT
    assert all(out[v] == "a red cube with a smiling" for v in VIEWS[1:])


def test_a_view_keeps_the_whole_prompt_rather_than_none():
    out = pd.debias_words("face", ["front", "back"], lambda text: torch.tensor([0.9, 0.1]) if text else
                          torch.tensor([0.1, 0.9]))
    assert out == {"front": "face", "back": "face"}


def test_view_word_outside_the_vocabulary_is_a_config_error(tiny_bert):
    with pytest.raises(ConfigError, match="diagonal"):
        pd.debias_view_prompts(PROMPT, ["front", "diagonal"], tiny_bert)
