"""Response scoring: the lightweight misalignment classifier, its training and answer formats."""
