"""Modality codecs: how a label member is decoded, cropped, normalised and serialised.

specs (the tokenize spec of each modality, from the contract's table), rasters and cropping
(crop_settings rows applied to a label), instances and poses (SAM instance and pose
labels and token members), serializers (sequences as ml-4m's text), samples (a shard's
labels with their crop rows).
"""
