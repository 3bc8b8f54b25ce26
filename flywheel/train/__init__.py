"""Training: a recipe (YAML data, `recipes`) and a curated dataset (`data`) become a candidate.

`run.train` registers the candidate and drives the TRL/PEFT trainer (`trainers`) of the recipe's
method (`methods`: one entry per training method, the name → implementation table); `generate`
holds the greedy generation every run uses (teacher answers, exact-match checks); `card` writes
the model card.
"""
