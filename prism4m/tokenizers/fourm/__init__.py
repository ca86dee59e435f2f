"""apple/ml-4m's published tokenizers (4M-7 / 4M-21), loaded and run by prism4m.

``load_official(DIR_or_hub_id)`` reads a checkpoint as the hub publishes it
(``config.json`` + ``model.safetensors``), builds our own encoder + quantizer with ml-4m's
architecture and parameter names (``nets.py``), loads the weights strictly, and tokenizes
with ml-4m's exact preprocessing (``preprocess.py``), so the ids are the ones ml-4m's
``save_vq_tokens.py`` writes. ``families.py`` lists what was published and which prism4m
folders each tokenizer reads and writes. No ml-4m code is used or needed.
"""

from prism4m.tokenizers.fourm.config import OfficialConfig, OfficialConfigError, parse_config
from prism4m.tokenizers.fourm.families import FAMILIES, Family, family_by_name
from prism4m.tokenizers.fourm.load import (
    OfficialLoadError,
    OfficialTokenizer,
    is_official_dir,
    load_official,
    looks_like_hub_id,
)

__all__ = [
    "FAMILIES", "Family", "OfficialConfig", "OfficialConfigError", "OfficialLoadError", "OfficialTokenizer",
    "family_by_name", "is_official_dir", "load_official", "looks_like_hub_id", "parse_config",
]
