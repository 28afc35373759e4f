from nodes.rule_check import check_summary

PREVIOUS = ["Violent crime", "Fraud and scams"]


def check(proposed, new="Animal cruelty", **kw):
    kw.setdefault("max_words", 5)
    kw.setdefault("max_lines", 10)
    return check_summary(PREVIOUS, proposed, new, **kw)


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
    assert "duplicate" in kinds and "shortened" in kinds and "not the new category" in kinds


def test_already_covered_category_adds_nothing():
    final, corrections = check(["Violent crime", "Fraud and scams"], new="Scams and fraud")
    assert final == PREVIOUS
    assert corrections == []


def test_line_bound_compacts_oldest_lines():
    previous = [f"Category {i} harm" for i in range(10)]
    final, corrections = check_summary(
        previous, [*previous, "Animal cruelty"], "Animal cruelty", max_words=5, max_lines=10
    )
    assert len(final) == 10
    assert final[-1] == "Animal cruelty" and final[0] == "Category 1 harm"
    assert any("compacted" in c for c in corrections)


def test_new_line_restating_an_old_category_is_replaced():
    # SmolLM2 writes the new category into an old line ("Violent crime: ...")
    final, corrections = check([*PREVIOUS, 'Violent crime: "Human Trafficking'],
                               new="Human trafficking")
    assert final == [*PREVIOUS, "Human trafficking"]
    assert any("not the new category" in c for c in corrections)
    assert any("added missing new category" in c for c in corrections)
