"""Tasks: features, collation, evaluation and metrics against hand-computed values; loading users' own data."""

from __future__ import annotations

import csv
import json
import math
from functools import lru_cache
from types import SimpleNamespace

import pytest
import torch
from rouge_score import rouge_scorer

from prunekit.core.errors import UsageError
from prunekit.tasks import (
    IGNORE_INDEX,
    TASK_KINDS,
    PadCollator,
    evaluation_data,
    get_task,
    load_data,
)
from prunekit.tasks.metrics import (
    classification_metrics,
    normalize_answer,
    perplexity,
    rouge_metrics,
    squad_metrics,
)
from prunekit.tasks.qa import best_span


@lru_cache(maxsize=1)
def _tokenizer():
    from transformers import AutoTokenizer

    from prunekit.catalog.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))  # `make setup` installs the MiniLM package


@pytest.fixture
def tok():
    return _tokenizer()


def _dataset(cols: dict, task: str = "classification"):
    from datasets import Dataset

    return Dataset.from_dict(cols)


class _Model(torch.nn.Module):
    """A stand-in model: a parameter (for the device) and a forward given as a function of input_ids."""

    def __init__(self, fn):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.fn = fn

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.fn(input_ids)


# --- metrics -------------------------------------------------------------------------------------------------


def test_classification_metrics_match_hand_computation():
    # TP=2 FP=1 TN=2 FN=0 -> acc 4/5; MCC = (2*2 - 1*0) / sqrt(3*2*3*2) = 4/6; per-class F1 0.8 and 0.8
    m = classification_metrics([0, 1, 1, 0, 1], [0, 1, 0, 0, 1])
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["mcc"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx(0.8)


def test_squad_normalisation_em_and_f1():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    # 1st: EM after normalisation. 2nd: vs "1889" P=1/3 R=1 F1=0.5; vs "Paris, France" P=1/3 R=1/2 F1=0.4 -> max 0.5
    m = squad_metrics(["the Eiffel Tower!", "in 1889 Paris"], [["Eiffel Tower"], ["1889", "Paris, France"]])
    assert m["exact_match"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx(75.0)
    assert squad_metrics(["nothing here"], [["tower"]]) == {"exact_match": 0.0, "f1": 0.0}


def test_rouge_matches_hand_values_and_rouge_score():
    pred, ref = "the cat sat on the mat", "the cat is on the mat"
    m = rouge_metrics([pred], [[ref]])
    # unigrams overlap 5/6 both ways; bigrams 3/5 (the cat, on the, the mat); LCS "the cat on the mat" = 5
    assert m["rouge1"] == pytest.approx(100 * 5 / 6)
    assert m["rouge2"] == pytest.approx(60.0)
    assert m["rougeL"] == pytest.approx(100 * 5 / 6)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    direct = scorer.score(ref, pred)
    assert m == pytest.approx({k: 100 * s.fmeasure for k, s in direct.items()})
    # the best of several references counts; a worse extra reference changes nothing; means over examples
    assert rouge_metrics([pred], [["dogs bark loudly", ref]]) == pytest.approx(m)
    two = rouge_metrics([pred, "dogs bark"], [[ref], ["dogs bark"]])
    assert two["rouge1"] == pytest.approx((100 * 5 / 6 + 100) / 2)


def test_perplexity_is_token_weighted():
    assert perplexity(6.0, 3) == pytest.approx(math.exp(2.0))
    assert math.isnan(perplexity(0.0, 0))


# --- classification ------------------------------------------------------------------------------------------


def test_classification_evaluate_hand_computed(tok):
    good = tok.convert_tokens_to_ids("good")

    def fn(ids):  # class 1 with logits (0, 2) when the text contains "good", else class 0 with (2, 0)
        has = (ids == good).any(-1).float()
        return SimpleNamespace(logits=torch.stack([2 * (1 - has), 2 * has], -1))

    split = _dataset({"text": ["good movie", "bad movie", "good fun", "bad"], "label": [1, 0, 0, 0]})
    m = get_task("classification").evaluate(_Model(fn), split, tok, batch_size=3)
    assert m["accuracy"] == pytest.approx(0.75)
    # MCC of preds [1,0,1,0] vs [1,0,0,0]: TP=1 FP=1 TN=2 FN=0 -> 2/sqrt(2*1*3*2)
    assert m["mcc"] == pytest.approx(2 / math.sqrt(12))
    right, wrong = math.log(1 + math.exp(-2)), math.log(1 + math.exp(2))
    assert m["eval_loss"] == pytest.approx((3 * right + wrong) / 4, rel=1e-5)


def test_classification_features_pairs_and_collator(tok):
    task = get_task("pair-classification")
    split = _dataset({"text": ["a claim", "another longer claim here"], "text_pair": ["x", "y z"], "label": [2, 0]})
    feats = task.features(split, tok, max_length=8)
    assert feats.column_names == ["input_ids", "attention_mask", "token_type_ids", "labels"]
    assert max(len(x) for x in feats["input_ids"]) <= 8
    assert feats[0]["input_ids"] == tok("a claim", "x")["input_ids"]
    assert 1 in feats[0]["token_type_ids"]  # the pair is the second segment
    batch = task.collator(tok)([feats[0], feats[1]])
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 8)
    assert batch["labels"].tolist() == [2, 0]
    n = len(feats[0]["input_ids"])
    assert batch["input_ids"][0, n:].eq(tok.pad_token_id).all() and batch["attention_mask"][0, n:].eq(0).all()
    data = {"train": _dataset({"text": ["a"], "label": [4]})}
    assert task.num_labels(data) == 5


def test_classification_with_a_real_tiny_bert(tok):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=24, num_labels=2)  # fmt: skip
    model = BertForSequenceClassification(cfg).train()
    split = _dataset({"text": ["good", "bad", "fine film", "awful"], "label": [1, 0, 1, 0]})
    m = get_task("classification").evaluate(model, split, tok, batch_size=3, max_examples=3)
    assert set(m) == {"accuracy", "macro_f1", "mcc", "eval_loss"}
    assert model.training  # evaluate restores the mode it found


# --- extractive QA -------------------------------------------------------------------------------------------


def test_best_span_from_handmade_logits():
    context = "Paris is the capital of France."
    # window 1: [CLS] q [SEP] Paris is the capital [SEP]; window 2: [CLS] q [SEP] capital of France . [SEP]
    off1 = [None, None, None, (0, 5), (6, 8), (9, 12), (13, 20), None]
    off2 = [None, None, None, (13, 20), (21, 23), (24, 30), (30, 31), None]
    s1 = [9.0, 0, 0, 2.0, 0, 0, 0, 0]  # CLS scores highest but is not in the context
    e1 = [9.0, 0, 0, 2.5, 0, 0, 0, 0]  # "Paris": 4.5
    s2 = [0, 0, 0, 0, 0, 3.0, 0, 8.0]  # the [SEP] start is skipped
    e2 = [0, 0, 0, 5.0, 0, 2.0, 0, 0]  # end "capital" before start "France" is invalid -> "France": 5.0
    assert best_span([s1, s2], [e1, e2], [off1, off2], context) == "France"
    # a span longer than max_answer_length is skipped: "capital of France" (3 tokens) vs "Paris"
    s3 = [-9.0, -9, -9, 6.0, -9, -9, -9, -9]
    e3 = [-9.0, -9, -9, -9, -9, 6.0, -9, -9]
    assert best_span([s1, s3], [e1, e3], [off1, off2], context, max_answer_length=3) == "capital of France"
    assert best_span([s1, s3], [e1, e3], [off1, off2], context, max_answer_length=2) == "Paris"


QA_CONTEXT = (
    "The tower was built for the world fair. Many people visited it in the first year. "
    "It was designed by the engineer Gustave Eiffel and finished in 1889 in Paris. "
    "Later it was used for radio experiments, and today it is the most visited paid monument."
)


def _qa_split():
    answers = ["Gustave Eiffel", "1889", "radio experiments"]
    return _dataset(
        {
            "id": ["a", "b", "c"],
            "title": ["t"] * 3,
            "context": [QA_CONTEXT] * 3,
            "question": ["Who designed the tower?", "  When was it finished?", "What was it used for later?"],
            "answers": [{"text": [a], "answer_start": [QA_CONTEXT.index(a)]} for a in answers],
        }
    )


def test_qa_features_positions_recover_the_answer(tok):
    split = _qa_split()
    task = get_task("extractive-qa", doc_stride=8)
    feats = task.features(split, tok, max_length=40)
    assert len(feats) > len(split)  # the context needs several windows
    from prunekit.tasks.qa import encode_windows

    enc = encode_windows(tok, split["question"], split["context"], 40, 8)
    found = set()
    for i, f in enumerate(feats):
        ex = enc["overflow_to_sample_mapping"][i]
        gold = split[ex]["answers"]["text"][0]
        s, e = f["start_positions"], f["end_positions"]
        if s == 0:
            assert e == 0 and f["input_ids"][0] == tok.cls_token_id
            continue
        offs = enc["offset_mapping"][i]
        assert QA_CONTEXT[offs[s][0] : offs[e][1]] == gold
        assert normalize_answer(tok.decode(f["input_ids"][s : e + 1])) == normalize_answer(gold)
        found.add(ex)
    assert found == {0, 1, 2}
    assert task.collator(tok)([feats[0], feats[1]])["start_positions"].shape == (2,)


def test_qa_evaluate_maps_logits_back_to_text(tok):
    # a model that reads the question word and points at the first and last word piece of that question's answer
    # gets EM = F1 = 100: windows are grouped back to their example and spans mapped back to context characters
    def ids(*words):
        return [tok.convert_tokens_to_ids(w) for w in words]

    spans = {"who": ids("gustave", "eiffel"), "when": ids("1889", "1889"), "what": ids("radio", "experiments")}

    def fn(input_ids):
        s = torch.zeros(input_ids.shape)
        e = torch.zeros(input_ids.shape)
        for row, seq in enumerate(input_ids):
            for word, (first, last) in spans.items():
                if ids(word)[0] in seq:
                    s[row] += (seq == first).float() * 10
                    e[row] += (seq == last).float() * 10
        return SimpleNamespace(start_logits=s, end_logits=e)

    task = get_task("extractive-qa", doc_stride=4)
    split = _qa_split()
    assert len(task.features(split, tok, max_length=24)) > 6  # many windows, spread over model batches
    m = task.evaluate(_Model(fn), split, tok, max_length=24, batch_size=2)
    assert m["exact_match"] == 100.0 and m["f1"] == 100.0
    assert m["eval_loss"] > 0
    m = task.evaluate(_Model(fn), split, tok, max_length=24, max_examples=1)
    assert m["exact_match"] == 100.0


def test_qa_with_a_real_tiny_bert(tok):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=24)  # fmt: skip
    m = get_task("extractive-qa", doc_stride=8).evaluate(BertForQuestionAnswering(cfg), _qa_split(), tok, max_length=40)
    assert 0 <= m["f1"] <= 100 and 0 <= m["exact_match"] <= m["f1"] + 1e-9
    with pytest.raises(UsageError, match="doc_stride"):
        get_task("extractive-qa", doc_stride=30).features(_qa_split(), tok, max_length=32)
    # an overlong question is cut so that the window still holds stride + 1 context tokens
    long_q = _qa_split().map(lambda r: {"question": "why " * 40 + r["question"]})
    feats = get_task("extractive-qa", doc_stride=8).features(long_q, tok, max_length=32)
    assert len(feats) > 3 and all(len(ids) <= 32 for ids in feats["input_ids"])


# --- causal LM -----------------------------------------------------------------------------------------------


def _tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=24, max_position_embeddings=128, head_dim=8,
                      attn_implementation="eager", initializer_range=0.3)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def test_lm_features_group_texts_with_eos(tok):
    task = get_task("causal-lm")
    split = _dataset({"text": ["one two three", "four five"]})
    feats = task.features(split, tok, max_length=4)
    stream = [*tok("one two three", add_special_tokens=False)["input_ids"], tok.sep_token_id]
    stream += [*tok("four five", add_special_tokens=False)["input_ids"], tok.sep_token_id]  # BERT: SEP ends a doc
    assert [t for b in feats["input_ids"] for t in b] == stream
    assert all(len(b) == 4 for b in feats["input_ids"][:-1])
    assert feats["labels"] == feats["input_ids"]
    batch = task.collator(tok)([feats[0], feats[len(feats) - 1]])
    short = len(feats[len(feats) - 1]["input_ids"])
    assert batch["labels"][1, short:].eq(IGNORE_INDEX).all() and batch["labels"][0].ne(IGNORE_INDEX).all()


def test_perplexity_equals_hand_summed_nll_with_unequal_batches(tok):
    task = get_task("causal-lm")
    model = _tiny_llama(len(tok))
    split = _dataset({"text": ["to be or not to be that is the question", "whether tis nobler in the mind"]})
    blocks = task.blocks(split["text"], tok, 8)
    assert len(blocks) == 3 and len(blocks[-1]) < 8  # batches of 2 and 1 blocks, one block shorter
    nll, count = 0.0, 0
    for b in blocks:  # one block at a time, no padding
        ids = torch.tensor([b])
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        nll -= logp.gather(-1, ids[0, 1:, None]).sum().item()
        count += len(b) - 1
    m = task.evaluate(model, split, tok, batch_size=2, max_length=8)
    assert m["eval_tokens"] == count
    assert m["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert m["eval_loss"] == pytest.approx(nll / count, rel=1e-4)


# --- summarization -------------------------------------------------------------------------------------------


def test_summarization_labels_mask_the_prompt_and_cut_the_source(tok):
    task = get_task("summarization")
    source = " ".join(["word"] * 200)
    split = _dataset({"source": ["a short text", source], "target": ["short", "many words"]})
    feats = task.features(split, tok, max_length=32)
    for row, target in zip(feats, ["short", "many words"], strict=True):
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels) <= 32
        n_prompt = sum(1 for x in labels if x == IGNORE_INDEX)
        assert labels[n_prompt:] == ids[n_prompt:]  # the target and EOS, unmasked
        assert ids[-1] == tok.sep_token_id  # EOS (SEP for a BERT tokenizer)
        assert tok.decode(ids[n_prompt:-1]) == target
        assert tok.decode(ids[:n_prompt]).endswith("summary :")  # the cue survives truncation
    assert len(feats[1]["input_ids"]) == 32  # the long source was cut to fit, the target kept whole
    assert (
        tok.decode(feats[0]["input_ids"][: feats[0]["labels"].count(IGNORE_INDEX)])
        == "summarize : a short text summary :"
    )
    custom = get_task("summarization", template="TL;DR {source} =>").features(split.select([0]), tok, 32)
    assert tok.decode(custom[0]["input_ids"]).startswith("tl ; dr a short text = >")
    with pytest.raises(UsageError, match="source"):
        get_task("summarization", template="no placeholder")


def test_summarization_evaluate_scores_the_continuation_only(tok):
    answer = tok("the cat sat", add_special_tokens=False)["input_ids"]
    seen = {}

    class Gen(_Model):
        def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
            seen["mask"] = attention_mask.clone()
            tail = torch.tensor(answer + [kw["eos_token_id"]]).expand(len(input_ids), -1)
            return torch.cat([input_ids, tail], 1)

    vocab = len(tok)
    model = Gen(lambda ids: SimpleNamespace(logits=torch.zeros(*ids.shape, vocab)))  # uniform: NLL = log V per token
    split = _dataset(
        {
            "source": ["a long text about a cat on a mat", "short"],
            "target": ["the cat is on the mat", "x"],
            "references": [["the cat is on the mat"], ["dogs", "the cat sat"]],
        }
    )
    m = get_task("summarization").evaluate(model, split, tok, batch_size=2, max_length=64)
    assert m["rouge1"] == pytest.approx((100 * (2 * (2 / 3) * (2 / 6)) / (2 / 3 + 2 / 6) + 100) / 2)
    assert m["eval_loss"] == pytest.approx(math.log(vocab), rel=1e-5)
    assert seen["mask"][1, 0] == 0 and seen["mask"][:, -1].eq(1).all()  # left padding


def test_summarization_left_padded_generation_matches_unpadded(tok):
    model = _tiny_llama(len(tok))
    task = get_task("summarization", max_new_tokens=5)
    sources = ["a somewhat longer text to summarise here", "tiny"]
    both = task.generate(model, tok, sources, max_length=64, device="cpu")
    alone = [task.generate(model, tok, [s], max_length=64, device="cpu")[0] for s in sources]
    assert both == alone


# --- tasks and data ------------------------------------------------------------------------------------------


def test_get_task_kinds_and_errors():
    for kind in TASK_KINDS:
        task = get_task(kind)
        assert task.kind == kind and task.main_metric and task.model_head
    assert get_task("causal-lm").greater_is_better is False
    assert get_task("extractive-qa", doc_stride=16).options["doc_stride"] == 16
    with pytest.raises(UsageError, match="classification, pair-classification"):
        get_task("regression")
    with pytest.raises(UsageError, match="doc_stride"):
        get_task("extractive-qa", stride=3)


def _write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _reviews(n_per_class: int = 20):
    return [
        {"review": f"review {c} {i}", "stars": c, "id": f"{c}{i}"}
        for c in ("good", "bad", "meh")
        for i in range(n_per_class)
    ]


def test_load_csv_with_column_mapping_string_labels_and_stratified_splits(tmp_path):
    path = _write_csv(tmp_path / "reviews.csv", _reviews())
    data, task = load_data(str(path), columns={"text": "review", "label": "stars"}, seed=3, test_fraction=0.2)
    assert task == "classification"
    assert list(data) == ["train", "validation", "test"]
    assert data["train"].features["label"].names == ["bad", "good", "meh"]  # sorted unique names
    assert {k: len(v) for k, v in data.items()} == {"train": 42, "validation": 6, "test": 12}
    for split in ("validation", "test"):  # stratified: every class equally often
        labels = data[split]["label"]
        assert [labels.count(k) for k in range(3)] == [len(labels) // 3] * 3
    texts = [t for s in data.values() for t in s["text"]]
    assert sorted(texts) == sorted(r["review"] for r in _reviews())  # a partition
    row = data["train"][0]
    assert row["label"] == ["bad", "good", "meh"].index(row["text"].split()[1])
    again, _ = load_data(str(path), columns={"text": "review", "label": "stars"}, seed=3, test_fraction=0.2)
    other, _ = load_data(str(path), columns={"text": "review", "label": "stars"}, seed=4, test_fraction=0.2)
    assert again["test"]["text"] == data["test"]["text"]
    assert other["test"]["text"] != data["test"]["text"]
    capped, _ = load_data(str(path), columns={"text": "review", "label": "stars"}, max_examples=9)
    assert len(capped["train"]) == 9 and sorted(capped["train"]["label"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_missing_column_names_it_and_lists_existing(tmp_path):
    path = _write_csv(tmp_path / "reviews.csv", _reviews(2))
    with pytest.raises(UsageError) as err:
        load_data(str(path), task="classification", columns={"text": "review"})
    msg = str(err.value)
    assert "'label'" in msg and "review, stars, id" in msg
    with pytest.raises(UsageError, match="no column 'body'.*review, stars, id"):
        load_data(str(path), columns={"text": "body", "label": "stars"})
    with pytest.raises(UsageError, match="canonical columns are text, text_pair, label"):
        load_data(str(path), columns={"txt": "review"})
    with pytest.raises(UsageError, match="cannot tell the task"):
        load_data(str(path))
    with pytest.raises(UsageError, match="neither a named dataset"):
        load_data(str(tmp_path / "nope.csv"))


def test_load_jsonl_infers_pair_task_and_keeps_int_labels(tmp_path):
    path = tmp_path / "nli.jsonl"
    rows = [{"text": f"premise {i}", "text_pair": f"hypothesis {i}", "label": i % 3} for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data, task = load_data(str(path), validation_fraction=0.2, test_fraction=0.0)
    assert task == "pair-classification"
    assert len(data["validation"]) == 6 and len(data["test"]) == 0
    assert data["train"].features["label"].names == ["0", "1", "2"]
    assert get_task(task).num_labels(data) == 3


def test_load_qa_csv_with_bare_answers_and_json_splits(tmp_path):
    rows = [{"q": f"Who designed tower {i}?", "ctx": f"Tower {i} was designed by Eiffel.", "ans": "Eiffel"}
            for i in range(10)]  # fmt: skip
    path = _write_csv(tmp_path / "qa.csv", rows)
    data, task = load_data(str(path), columns={"question": "q", "context": "ctx", "answers": "ans"})
    assert task == "extractive-qa"
    ex = data["train"][0]
    assert ex["context"][ex["answers"]["answer_start"][0] :].startswith("Eiffel") and ex["id"]
    jpath = tmp_path / "sum.json"
    recs = [{"source": f"doc {i}", "target": f"sum {i}"} for i in range(10)]
    jpath.write_text(json.dumps({"train": recs, "dev": recs[:2]}))
    data, task = load_data(str(jpath), test_fraction=0.2)
    assert task == "summarization"
    assert {k: len(v) for k, v in data.items()} == {"train": 8, "validation": 2, "test": 2}
    assert data["validation"][0]["references"] == ["sum 0"]


def test_save_to_disk_folder_keeps_splits_and_class_names(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    feats = Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    dd = DatasetDict(
        {
            "train": Dataset.from_dict(
                {"sentence": [f"s{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}, features=feats
            ),
            "test": Dataset.from_dict({"sentence": ["t0", "t1"], "label": [1, 0]}, features=feats),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    data, task = load_data(str(tmp_path / "dd"), columns={"text": "sentence"}, validation_fraction=0.2)
    assert task == "classification"
    assert data["test"]["text"] == ["t0", "t1"]  # kept
    assert len(data["validation"]) == 4 and len(data["train"]) == 16  # carved out of train
    assert data["train"].features["label"].names == ["neg", "pos"]


def test_evaluation_data_reads_whole_file_with_model_label_names(tmp_path):
    path = _write_csv(tmp_path / "eval.csv", [{"text": "fine", "label": "pos"}, {"text": "meh", "label": "pos"}])
    ds = evaluation_data(str(path), task="classification", label_names=["neg", "pos"])
    assert ds["label"] == [1, 1] and len(ds) == 2
    assert evaluation_data(str(path), task="classification")["label"] == [0, 0]
    with pytest.raises(UsageError, match="not one of the classes"):
        evaluation_data(str(path), task="classification", label_names=["a", "b"])


def test_named_dataset_passes_through():
    data, task = load_data("rotten_tomatoes", max_examples=10)
    assert task == "classification" and len(data["train"]) == 10
    with pytest.raises(UsageError, match="not summarization"):
        load_data("rotten_tomatoes", task="summarization")


def test_pad_collator_stacks_scalars_and_skips_text():
    batch = PadCollator(0)(
        [{"input_ids": [5, 6, 7], "labels": [5, 6, 7], "id": "a"}, {"input_ids": [8], "labels": [8], "id": "b"}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert "id" not in batch
    as_tensors = PadCollator(0)(
        [
            {"input_ids": torch.tensor([1, 2]), "labels": torch.tensor(3)},
            {"input_ids": torch.tensor([4]), "labels": torch.tensor(0)},
        ]
    )
    assert as_tensors["input_ids"].tolist() == [[1, 2], [4, 0]] and as_tensors["labels"].tolist() == [3, 0]
