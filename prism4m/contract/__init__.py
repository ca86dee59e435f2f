"""The dataset contract (docs/DATASET.md), the ground floor every other package stands on:
the store (layout, ledger, atomic commits), member codecs, crop_settings, the manifest, the
staleness rule and the one table of modalities. It imports nothing else of prism4m."""
