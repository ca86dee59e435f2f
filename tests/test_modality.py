"""The modality codecs read the contract's one modality table, and the store's per-shard readers."""

from __future__ import annotations

from prism4m.contract.members import encode_json
from prism4m.contract.modalities import MODALITIES, SEQUENCE_FOLDERS
from prism4m.contract.store import DatasetStore, Member
from prism4m.modality.serializers import SEQUENCE_LABEL_FOLDERS, SERIALIZERS, TOKEN_FOLDER_SERIALIZERS
from prism4m.modality.specs import SPECS


def test_token_specs_take_folder_extension_kind_names_and_sizes_from_the_modality_table():
    for name, spec in SPECS.items():
        m = MODALITIES[name]
        assert (spec.folder, spec.ext, spec.kind, spec.token_name, spec.patch_size) == \
            (m.label_folder, m.ext, m.token_kind, m.token_name, m.patch_size), name
        for size in (64, 224):
            assert spec.token_folder(size) == m.token_folder(size)
        if not m.sequence:  # tokens inside a sequence have their own codebook (the table's is the text's)
            assert spec.default_vocab == m.vocab, name


def test_sequence_label_folders_are_the_tables_sequences_with_a_label_serializer():
    assert len(set(SEQUENCE_LABEL_FOLDERS)) == len(SEQUENCE_LABEL_FOLDERS)
    assert set(SEQUENCE_LABEL_FOLDERS) == set(SERIALIZERS) == {f for f in SEQUENCE_FOLDERS if f in SERIALIZERS}
    # the other sequence folders are built from token folders (sam_instance@224), not labels
    assert set(SEQUENCE_FOLDERS) - set(SERIALIZERS) <= set(TOKEN_FOLDER_SERIALIZERS)


def test_store_reads_one_shards_record_and_error_lines(tmp_path):
    store = DatasetStore(str(tmp_path / "ds"))
    assert store.record("det", 0) is None and store.shard_errors("det", 0) == []
    lines = [{"key": "b", "reason": "label_exception", "message": "det/b: boom"}]
    store.commit_unit(0, {"det": [Member("a", "json", encode_json({})), Member("b", "json", b"")]},
                      {"det": {"producer": {"kind": "labeler", "name": "det"}}}, {"det": lines})
    rec = store.record("det", 0)
    assert rec == store.ledger("det")[0] and rec["invalid"] == ["b"]
    assert store.shard_errors("det", 0) == lines
    assert store.record("det", 1) is None and store.shard_errors("det", 1) == []
