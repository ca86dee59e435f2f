"""A lightweight 4M trainer that reads prism4m token shards.

- ``modalities``: the modality registry (manifest / tokenizer cards / ml-4m defaults / config);
- ``data``: the key-zipped, ledger-aware, resumable shard loader (tars, ml-4m roots, Parquet);
- ``masking``: Dirichlet token budgets, image splits, T5 span masking;
- ``model``: the 4M encoder-decoder (micro / tiny / small / base / large / xlarge);
- ``train``: ``train(config)``, ``main(config_path)`` for ``prism4m train CONFIG``,
  ``train_with_ray`` for Ray Train, and the validation-vs-unigram-baseline table.

Submodules are imported on use so ``import prism4m.trainer`` stays cheap.
"""

__all__ = ["data", "masking", "modalities", "model", "train"]
