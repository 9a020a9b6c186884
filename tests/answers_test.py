"""Tests for gato_jax.rollout.answers: likelihood scoring with the real tiny Gato and with a hand-built model.

Array key: B = rows, T = tokens, V = vocabulary.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from documents_test import SEED, SIZE, small_tokenizer
from scipy import special

from data_pipelines import documents
from gato_jax.rollout import answers, checkpoint_eval
from gato_jax.rollout import report as report_lib
from gato_jax.tokenizers import sequence as seq_lib
from gato_jax.tokenizers.interleaved import TokenizedPrompt
from gato_jax.tokenizers.vocab import VocabLayout

LAYOUT = VocabLayout(text_size=100)  # The shared tiny model's layout (conftest `fns`, model_test.LAYOUT).


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = small_tokenizer(tmp_path_factory.mktemp("spm"))
    tok.check_layout(LAYOUT)
    return tok


def question_items(tokenizer, n: int, start: int = 0) -> list[TokenizedPrompt]:
    examples = [documents.make_example("questions", "test", i, SIZE, SEED) for i in range(start, start + n)]
    return documents.question_prompts(examples, tokenizer, LAYOUT)


def direct_loglik(fns, row: seq_lib.TokenSequence) -> float:
    """One unpadded row through the model alone: sum of log p(target) where the loss mask is set."""
    log_p_TxV = special.log_softmax(np.asarray(fns.forward(fns.state, seq_lib.stack([row])))[0].astype(np.float64),
                                    axis=-1)
    targets = np.flatnonzero(row.loss_mask[1:])
    return float(log_p_TxV[targets, row.tokens[1:][targets]].sum())


def test_gato_row_scores_equal_an_unpadded_pass(fns, tokenizer):
    assert fns.model.vocab_size == LAYOUT.padded_size
    item = question_items(tokenizer, 1)[0]  # A count question: three candidates of similar length.
    rows = answers.candidate_rows(item, tokenizer, LAYOUT)
    assert [int(r.loss_mask.sum()) for r in rows] == [len(tokenizer.encode(c)) + 1 for c in item.candidates]
    scores = answers.score_rows(answers.model_scorer(fns.model), rows, batch_size=8)
    want = [direct_loglik(fns, row) for row in rows]
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-4)


def test_gato_accuracy_by_type_compiles_once_per_bucket(fns, tokenizer):
    items = question_items(tokenizer, 7)  # One of each type.
    buckets = {answers.bucket(r.length) for it in items for r in answers.candidate_rows(it, tokenizer, LAYOUT)}
    before = answers._model_loglik._cache_size()
    report = answers.answer_accuracy(fns.model, items, tokenizer, LAYOUT, batch_size=8)
    assert answers._model_loglik._cache_size() - before <= len(buckets)
    assert set(report) == set(documents.QUESTION_TYPES) | {"all"}
    assert all(r["count"] == 1 for t, r in report.items() if t != "all") and report["all"]["count"] == 7
    assert report["colour"]["chance"] == pytest.approx(1 / 6) and 0 <= report["all"]["accuracy"] <= 1
    after = answers._model_loglik._cache_size()
    answers.answer_accuracy(fns.model, question_items(tokenizer, 7, start=7), tokenizer, LAYOUT, batch_size=8)
    assert answers._model_loglik._cache_size() == after, "same buckets, no new compile"


def yes_lover(tokenizer, vocab_size: int):
    """A 'model' whose every position strongly predicts the pieces of 'yes' and `<eos>`."""
    boost_V = np.zeros(vocab_size, np.float32)
    boost_V[tokenizer.encode("yes")] = 10.0
    boost_V[LAYOUT.special_id("<eos>")] = 10.0

    def logits_fn(seq):
        return jnp.broadcast_to(jnp.asarray(boost_V), (*seq.tokens.shape, vocab_size))

    return logits_fn


def test_scoring_picks_the_likeliest_candidate(tokenizer):
    examples = [documents.make_example("questions", "test", i, SIZE, SEED) for i in range(70)]
    items = [it for it in documents.question_prompts(examples, tokenizer, LAYOUT) if it.question_type == "same_colour"]
    scorer = answers.logits_scorer(yes_lover(tokenizer, LAYOUT.padded_size))
    chosen = answers.choose_answers(scorer, items, tokenizer, LAYOUT, batch_size=4)
    assert [it.candidates[c] for it, c in zip(items, chosen)] == ["yes"] * len(items)
    flipped = [it._replace(candidates=it.candidates[::-1], answer=1 - it.answer) for it in items]
    chosen = answers.choose_answers(scorer, flipped, tokenizer, LAYOUT, batch_size=4)
    assert [it.candidates[c] for it, c in zip(flipped, chosen)] == ["yes"] * len(items)
    report = answers.answer_accuracy(scorer, items, tokenizer, LAYOUT)
    share_yes = np.mean([it.candidates[it.answer] == "yes" for it in items])
    assert report["same_colour"]["accuracy"] == pytest.approx(share_yes)
    assert report["same_colour"]["majority"] == pytest.approx(max(share_yes, 1 - share_yes))


def test_accuracy_by_type_and_baselines():
    prompt = seq_lib.empty(4)
    items = [TokenizedPrompt(prompt, ("a", "b"), 0, "x"), TokenizedPrompt(prompt, ("a", "b"), 0, "x"),
             TokenizedPrompt(prompt, ("a", "b"), 1, "x"), TokenizedPrompt(prompt, ("p", "q", "r", "s"), 2, "y")]
    report = answers.accuracy_by_type(items, [0, 1, 1, 2])
    assert report["x"] == {"accuracy": 2 / 3, "chance": 0.5, "majority": 2 / 3, "count": 3}
    assert report["y"] == {"accuracy": 1.0, "chance": 0.25, "majority": 1.0, "count": 1}
    assert report["all"] == pytest.approx({"accuracy": 0.75, "chance": 0.4375, "majority": 0.75, "count": 4})
    ideal = answers.accuracy_by_type([it._replace(ideal=v) for it, v in zip(items, [1.0, 0.5, 0.0, 1.0])], [0, 1, 1, 2])
    assert ideal["x"]["ideal"] == pytest.approx(0.5) and ideal["all"]["ideal"] == pytest.approx(0.625)
    grouped_items = [it._replace(group=g) for it, g in zip(items, ["c", "s", "c", "c"])]
    grouped = answers.accuracy_by_type(grouped_items, [0, 1, 1, 2])
    assert grouped["x"]["by_group"] == {"c": {"accuracy": 1.0, "count": 2}, "s": {"accuracy": 0.0, "count": 1}}
    assert grouped["x"]["accuracy"] == report["x"]["accuracy"] and "by_group" not in grouped["all"]
    assert "by_group" not in answers.accuracy_by_type(items[:1] + [items[1]._replace(group="c")], [0, 0])["x"]
    with pytest.raises(ValueError, match="at least one"):
        answers.answer_accuracy(lambda seq: np.zeros(len(seq.tokens)), [], None, None)


def test_report_puts_the_ideal_reader_beside_fewshot_accuracy():
    scores = {"accuracy": 0.5, "chance": 0.5, "majority": 0.5, "count": 8}
    by_group = {"colour": {"accuracy": 0.75, "count": 4}, "shape": {"accuracy": 0.25, "count": 4}}
    vl = {"questions": {"count": scores}, "fewshot": {"fewshot_4": scores | {"ideal": 0.975, "by_group": by_group}}}
    md = report_lib.markdown({"vision_language": vl})
    assert "| fewshot | examples | accuracy | chance | majority | Bayes-optimal reader |" in md and "0.975" in md
    assert "fewshot_4 by the attribute the words name: colour 0.750 (4) / shape 0.250 (4)" in md
    assert "| questions | examples | accuracy | chance | majority |" in md


def test_logits_scorer_uses_only_masked_targets():
    seq = seq_lib.stack([seq_lib.empty(4)._replace(tokens=np.array([1, 2, 3, 0], np.int32),
                                                   loss_mask=np.array([False, False, True, False]))])
    logits = jax.nn.one_hot(jnp.array([[0, 3, 0, 0]]), 5) * 100.0  # Position 1 predicts token 3 surely.
    score = answers.logits_scorer(lambda s: jnp.broadcast_to(logits, (1, 4, 5)))(seq)
    np.testing.assert_allclose(score, [0.0], atol=1e-5)


def word_rows(tokenizer, n: int, shots: int) -> list[seq_lib.TokenSequence]:
    """Unpaired few-shot episodes with every word loss-masked (`documents.fewshot_word_rows` without a dataset)."""
    return [documents.tokenize_example(documents.make_example("fewshot", "test", i, SIZE, SEED, shots=shots,
                                                              paired=False), tokenizer, LAYOUT, label_loss=True)
            for i in range(n)]


def test_masked_token_nll_equals_an_unpadded_pass_and_feeds_the_word_summary(fns, tokenizer):
    rows = word_rows(tokenizer, 3, shots=2)
    per_row = answers.masked_token_nll(fns.model, rows, batch_size=2)  # Two batches, the second half blank.
    for row, nll in zip(rows, per_row):
        log_p_TxV = special.log_softmax(np.asarray(fns.forward(fns.state, seq_lib.stack([row])))[0].astype(np.float64),
                                        axis=-1)
        targets = np.flatnonzero(row.loss_mask[1:])
        assert len(nll) == 2 + 1 + 1, "two demonstration words, the query's, <eos>"
        np.testing.assert_allclose(nll, -log_p_TxV[targets, row.tokens[1:][targets]], rtol=1e-4, atol=1e-4)
    summary = checkpoint_eval.fewshot_word_nll(fns.model, rows)
    assert summary["episodes"] == 3 and summary["demonstrations"] == 2
    np.testing.assert_allclose(summary["by_word"], np.mean([nll[:-1] for nll in per_row], axis=0), rtol=1e-6)
    md = report_lib.markdown({"vision_language": {"fewshot_word_nll": summary,
                                                  "fewshot_word_nll_trained_kinds": {"text_keys": summary}}})
    assert "3 unpaired 2-demonstration episodes on held-out images" in md and "0.693 = ln 2" in md
    assert "easier kind `text_keys` this run trained on" in md


def test_word_losses_are_reported_for_each_easier_kind_the_run_trained_on():
    config = ml_collections.ConfigDict({"data": {"fewshot_train_identical": 0.5, "fewshot_train_text": 0.25,
                                                 "fewshot_train_one_difference": 0.0}})
    assert checkpoint_eval.trained_word_kinds(config) == ["identical", "text_keys"]
    assert checkpoint_eval.trained_word_kinds(ml_collections.ConfigDict({"data": {}})) == []
