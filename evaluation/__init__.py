"""Safety, utility and diversity evaluation (see issue 3)."""
