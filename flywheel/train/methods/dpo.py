"""Direct preference optimisation (TRL `DPOTrainer`) on curated pairs: prompt, chosen, rejected.

Curation writes the pairs from thumbs up/down and corrections; DPO usually starts from an SFT
candidate's merged model. No exact-match metric: the rows are pairs, not one target answer.
"""

from __future__ import annotations

from flywheel.train.methods.base import Method

DPO = Method(
    name="dpo",
    summary="direct preference optimisation (TRL `DPOTrainer`)",
    config="trl:DPOConfig",
    trainer="trl:DPOTrainer",
    columns=("prompt", "chosen", "rejected"),
    config_args=lambda recipe, cpu: {"beta": recipe.dpo_beta},
)
