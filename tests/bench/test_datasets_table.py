"""benchmarks/quality/datasets.py's table: the columns issue 30 judges the defaults by."""
from benchmarks.quality import datasets as D


def result(bertclf: float, encoder: float | None, ngram: float | None, **extra) -> dict:
    side = lambda v: None if v is None else {"accuracy": v}  # noqa: E731
    return {"task": "nsmc", "metric": "accuracy", "n_train": 4000, "n_test": 5000, "baseline": {"accuracy": 0.8094},
            "bertclf": {"accuracy": bertclf}, "encoder": side(encoder), "ngram": side(ngram),
            "ngram_partner": {"kept": True, "weight": 0.5}, "bertclf_train_seconds": 120, "extra_flags": [],
            "commit": "abc1234"} | extra


def test_the_model_is_flagged_only_when_more_than_0_3_pt_below_its_better_component():
    assert D.below_better(result(0.8216, 0.8034, 0.8116)) == "+1.0 pt"
    assert D.below_better(result(0.8100, 0.8034, 0.8116)) == "-0.2 pt"
    assert D.below_better(result(0.8080, 0.8034, 0.8116)).endswith("(more than 0.3 below)")
    assert D.below_better(result(0.8216, None, None)) == ""


def test_a_row_says_met_or_short_against_issue_30s_target():
    met, short = D.table_row("nsmc", result(0.8344, 0.82, 0.81)), D.table_row("nsmc", result(0.8216, 0.80, 0.81))
    assert "+2.5 pt (met)" in met and "+2.5 pt (short)" in short
    assert "+1.2 pt" in short and "0.50 (kept)" in short


def test_a_texts_row_names_the_unlabelled_rows_and_the_kept_pass(tmp_path):
    texts = tmp_path / "nsmc_texts.tsv"
    texts.write_text("document\n" + "좋아요\n" * 3, encoding="utf-8")
    row = D.table_row("nsmc", result(0.83, 0.82, 0.81, extra_flags=["--texts", str(texts)],
                                     texts={"kept": "pass-2"}))
    assert "(--texts (3 unlabelled reviews))" in row and "pass-2 kept" in row and str(tmp_path) not in row
