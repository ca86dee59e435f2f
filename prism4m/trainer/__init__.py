"""A lightweight 4M trainer that reads prism4m token shards (nanoGPT-style: one idea per file).

- ``config``: ``TrainConfig`` and its sections; ``modalities``: the registry (``TrainModality``);
- ``shards``: which shards a run reads, streamed and zipped by key (tars, ml-4m roots, Parquet);
- ``sequences``: serializers and the text tokenizer; ``decode``: raw members → token ids;
- ``masking``: Dirichlet token budgets, image splits, T5 span masking;
- ``data``: the resumable stream of masked batches (``TokenShardDataset``, ``TokenLoader``);
- ``model``: the 4M encoder-decoder (micro / tiny / small / base / large / xlarge);
- ``build``: ``Setup``, what a run builds from its config; ``optim``, ``distributed``, ``progress``;
- ``loop``: ``train(config)``, the training loop; ``checkpoint``: save and exact resume;
- ``evaluate``: validation loss per target modality vs unigram baselines;
- ``train``: entry points ``main(config_path)`` (``prism4m train CONFIG``), ``train_with_ray``.

Submodules are imported on use so ``import prism4m.trainer`` stays cheap.
"""

__all__ = ["build", "checkpoint", "config", "data", "decode", "distributed", "evaluate", "loop", "masking",
           "modalities", "model", "optim", "progress", "sequences", "shards", "train"]
