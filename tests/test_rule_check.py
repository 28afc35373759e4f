import random

from nodes.filters import content_words
from nodes.rule_check import check_summary, split_line, summary_names, summary_size

PREVIOUS = ["Violent crime", "Fraud and scams"]


def check(proposed, new="Animal cruelty", **kw):
    kw.setdefault("max_words", 5)
    kw.setdefault("max_lines", 10)
    final, corrections, _ = check_summary(PREVIOUS, proposed, new, **kw)
    return final, corrections


def test_correct_update_is_accepted():
    final, corrections = check(["Violent crime", "Fraud and scams", "Animal cruelty"])
    assert final == ["Violent crime", "Fraud and scams", "Animal cruelty"]
    assert corrections == []


def test_model_phrasing_of_new_category_is_kept():
    final, corrections = check(["Violent crime", "Fraud and scams", "Cruelty to animals"])
    assert final[-1] == "Cruelty to animals"
    assert corrections == []


def test_lost_line_is_restored_and_missing_category_added():
    final, corrections = check(["Violent crime"])
    assert final == ["Violent crime", "Fraud and scams", "Animal cruelty"]
    assert any("restored lost line" in c for c in corrections)
    assert any("added missing new category" in c for c in corrections)


def test_long_lines_duplicates_and_unrelated_lines_are_corrected():
    final, corrections = check(
        [
            "Violent crime",
            "Violent crime",
            "Fraud and scams",
            "Animal cruelty in farms and homes and zoos",
            "Knitting patterns",
        ]
    )
    assert final == ["Violent crime", "Fraud and scams", "Animal cruelty in farms and"]
    kinds = " ".join(corrections)
    assert "duplicate" in kinds and "shortened" in kinds and "not a new category" in kinds


def test_already_covered_category_adds_nothing():
    final, corrections = check(["Violent crime", "Fraud and scams"], new="Scams and fraud")
    assert final == PREVIOUS
    assert corrections == []


def test_line_bound_drop_oldest_is_the_former_design():
    previous = [f"Category {i} harm" for i in range(10)]
    final, corrections, _ = check_summary(
        previous, [*previous, "Animal cruelty"], "Animal cruelty", max_words=5, max_lines=10,
        overflow="drop_oldest",
    )
    assert len(final) == 10
    assert final[-1] == "Animal cruelty" and final[0] == "Category 1 harm"
    assert any("compacted" in c for c in corrections)


def test_line_bound_merges_instead_of_dropping():
    # fails on the former code, which dropped "Online fraud" here
    previous = ["Online fraud", "Violent crime", "Illegal drugs"]
    final, corrections, _ = check_summary(
        previous, [*previous, "Pensioner fraud"], "Pensioner fraud", max_words=5, max_lines=3
    )
    assert final == ["Violent crime", "Illegal drugs", "Fraud: Online; Pensioner"]
    assert any("merged" in c for c in corrections)
    assert names(final) == {frozenset(content_words(c)) for c in [*previous, "Pensioner fraud"]}


def names(summary):
    return {frozenset(content_words(n)) for n in summary_names(summary)}


def test_long_run_keeps_every_category_findable_within_the_bound():
    kinds = "pensioner online phone crypto bank charity dating tax".split()
    harms = "fraud stalking smuggling poaching piracy bribery".split()
    added = [f"{kind.capitalize()} {harm}" for harm in harms for kind in kinds]
    random.Random(0).shuffle(added)
    added += ["Animal cruelty", "Elder abuse", "Deepfake pornography", "Arson attacks"]
    summary = list(PREVIOUS)
    for category in added:
        summary, _, _ = check_summary(summary, [*summary, category], category,
                                   max_words=5, max_lines=8, max_children=10)
        assert len(summary) <= 8
        assert all(len(split_line(line).children) <= 10 for line in summary)
        split = [split_line(line) for line in summary]
        assert all(c == c.strip() and len(c.split()) <= 5 for s in split for c in s.children)
    # every category is listed (by its words, a child with its parent's), or counted
    listed = names(summary)
    everything = {frozenset(content_words(c)) for c in [*PREVIOUS, *added]}
    assert listed <= everything
    assert summary_size(summary) == len(everything)
    # and with groups large enough, listed: nothing is lost to a count
    summary = list(PREVIOUS)
    for category in added:
        summary, _, _ = check_summary(summary, [*summary, category], category,
                                   max_words=5, max_lines=8, max_children=20)
    assert names(summary) == everything and len(summary) <= 8


def test_merged_summary_is_accepted_as_it_is_next_round():
    previous = ["Violent crime", "Fraud: online; pensioner"]
    final, corrections, _ = check_summary(previous, [*previous, "Animal cruelty"],
                                       "Animal cruelty", max_words=5, max_lines=3)
    assert final == [*previous, "Animal cruelty"] and corrections == []
    # a kind the group already lists is covered: nothing added
    final, corrections, _ = check_summary(previous, previous, "Online fraud", max_words=5,
                                       max_lines=3)
    assert final == previous and corrections == []


def test_new_kind_written_into_its_group_is_accepted():
    previous = ["Violent crime", "Fraud: online; pensioner"]
    final, corrections, _ = check_summary(
        previous, ["Violent crime", "Fraud: online; pensioner; phone"], "Phone fraud",
        max_words=5, max_lines=3)
    assert final == ["Violent crime", "Fraud: online; pensioner; phone"]
    assert corrections == []
    # a group that loses a kind is restored, the new category added on its own line
    final, corrections, _ = check_summary(
        previous, ["Violent crime", "Fraud: online; phone"], "Phone fraud", max_words=5,
        max_lines=3)
    assert "Fraud: online; pensioner; phone" in final or "Fraud: online; pensioner" in final
    assert any("restored lost line" in c for c in corrections)
    assert names(final) >= names(previous) | {frozenset({"phone", "fraud"})}


def test_split_line_keeps_single_colon_categories_whole():
    assert not split_line('Violent crime: "Human Trafficking').is_group
    group = split_line("Fraud: online; phone; +3 more")
    assert group.is_group and group.children == ["online", "phone"] and group.size() == 5


def test_new_line_restating_an_old_category_is_replaced():
    # SmolLM2 writes the new category into an old line ("Violent crime: ...")
    final, corrections = check([*PREVIOUS, 'Violent crime: "Human Trafficking'],
                               new="Human trafficking")
    assert final == [*PREVIOUS, "Human trafficking"]
    assert any("not a new category" in c for c in corrections)
    assert any("added missing new category" in c for c in corrections)


def test_summarizer_merge_of_similar_lines_is_accepted():
    previous = ["Violent crime", "Online fraud", "Pensioner fraud", "Illegal drugs"]
    merged = ["Violent crime", "Fraud: online; pensioner; phone", "Illegal drugs"]
    final, corrections, _ = check_summary(previous, merged, "Phone fraud", max_words=5,
                                       max_lines=10)
    assert final == merged and corrections == []
    # the same merge of old lines, the new category on its own line
    final, corrections, _ = check_summary(
        previous, ["Violent crime", "Fraud: online; pensioner", "Illegal drugs", "Animal cruelty"],
        "Animal cruelty", max_words=5, max_lines=10)
    assert final == ["Violent crime", "Fraud: online; pensioner", "Illegal drugs",
                     "Animal cruelty"] and corrections == []


def test_summarizer_merge_that_loses_or_invents_a_category_is_refused():
    previous = ["Violent crime", "Online fraud", "Pensioner fraud"]
    for merge in ["Fraud: online; tax", "Fraud: online; pensioner; bank"]:
        final, corrections, _ = check_summary(previous, ["Violent crime", merge], "Animal cruelty",
                                           max_words=5, max_lines=10)
        assert final == [*previous, "Animal cruelty"]
        assert any("restored lost line" in c for c in corrections)
    # a merge taking half of an old group would split it
    previous = ["Violent crime", "Fraud: online; pensioner; phone", "Tax evasion"]
    final, corrections, _ = check_summary(
        previous, ["Violent crime", "Fraud: online; phone", "Money: pensioner fraud; tax evasion"],
        "Animal cruelty", max_words=5, max_lines=10)
    assert names(final) >= names(previous)
    assert summary_size(final) == summary_size(previous) + 1
