import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from trainer_fixtures import make_text_tokenizer, token_modalities, write_token_root  # noqa: E402

from prism4m.contract.members import decode_npy  # noqa: E402
from prism4m.trainer.data import TokenLoader, TokenShardDataset  # noqa: E402
from prism4m.trainer.decode import SampleDecoder  # noqa: E402
from prism4m.trainer.masking import UnifiedMasker, all2all  # noqa: E402
from prism4m.trainer.modalities import build_registry  # noqa: E402
from prism4m.trainer.shards import discover_shards, iter_shard  # noqa: E402

TOKENIZER = make_text_tokenizer()


def components(root, layout="auto", **loader_kw):
    names, overrides = token_modalities(text_vocab=TOKENIZER.get_vocab_size())
    registry = build_registry(names, root, overrides)
    folders = [s.folder for s in registry.values()] + ["crop_settings"]
    sources = discover_shards(root, folders, layout)
    decoder = SampleDecoder(registry, TOKENIZER, random_crop=loader_kw.pop("random_crop", True))
    masker = UnifiedMasker(registry, [all2all(names)], 16, 16)
    kw = dict(batch_size=4, seed=0, shuffle_buffer=8)
    kw.update(loader_kw)
    return registry, sources, decoder, masker, kw


def raw_samples(sources, decoder, random_crop=False):
    """key -> decoded (unmasked) sample, read through the loader's decoder."""
    out = {}
    for source in sources:
        for i, (key, members) in enumerate(iter_shard(source)):
            out[key] = decoder(key, members, source.invalid, np.random.default_rng(i))
    return out


def test_key_divergence_raises_a_clear_error(tmp_path):
    root = str(tmp_path)
    write_token_root(root, n_shards=2, per_shard=8, swap_keys_in=("tok_b@32", 1))
    _, sources, decoder, masker, kw = components(root)
    ds = TokenShardDataset(sources, decoder, masker, **kw)
    with pytest.raises(ValueError) as err:
        for _ in TokenLoader(ds):
            pass
    message = str(err.value)
    assert "shard 1" in message and "divergence" in message
    assert "'tok_a@32'" in message and "'tok_b@32'" in message
    assert "'s001_0003'" in message and "'s001_0004'" in message


def test_only_shards_with_ledger_records_in_every_folder_are_read(tmp_path):
    root = str(tmp_path)
    write_token_root(root, n_shards=3, per_shard=6, skip_ledger={"caption": {1}})
    _, sources, *_ = components(root)
    assert [s.index for s in sources] == [0, 2]


def test_invalid_records_leave_the_modality_out_of_the_sample(tmp_path):
    root = str(tmp_path)
    write_token_root(root, n_shards=1, per_shard=6, invalid={"tok_b@32": {"s000_0002"}, "caption": {"s000_0004"}})
    registry, sources, decoder, masker, kw = components(root)
    samples = raw_samples(sources, decoder)
    assert samples["s000_0002"]["tok_b@32"] is None and samples["s000_0002"]["tok_a@32"] is not None
    assert samples["s000_0004"]["caption"] is None
    masked = masker(samples["s000_0002"], np.random.default_rng(0))
    assert not masked["tok_b@32"]["input_mask"].any() and not masked["tok_b@32"]["target_mask"].any()


def test_one_crop_row_is_shared_by_every_modality(tmp_path):
    # The fixture makes tok_b = (7 * tok_a + 3) % 48 row by row and rows differ, so the
    # relation holds only if both modalities took the same crop row.
    root = str(tmp_path)
    write_token_root(root, n_shards=1, per_shard=16, n_crops=4)
    _, sources, decoder, *_ = components(root)
    rows_seen = set()
    for i, (key, members) in enumerate(iter_shard(sources[0])):
        for j in range(4):
            sample = decoder(key, members, {}, np.random.default_rng([i, j]))
            np.testing.assert_array_equal(sample["tok_b@32"], (sample["tok_a@32"] * 7 + 3) % 48)
            all_rows = decode_npy(members["tok_a@32"][1])
            rows_seen.add(int(np.flatnonzero((all_rows == sample["tok_a@32"]).all(1))[0]))
    assert len(rows_seen) > 1  # random crops really vary


def test_memory_root_and_parquet_export_give_the_same_samples(tmp_path):
    write_token_root("memory://trainer-test-root", n_shards=2, per_shard=5)
    _, sources, decoder, *_ = components("memory://trainer-test-root")
    from_tars = raw_samples(sources, decoder)

    # Write the Parquet export from the same shards, as DATASET.md lays it out.
    export = tmp_path / "_export" / "parquet"
    export.mkdir(parents=True)
    for source in sources:
        rows = {"key": [], "shard": [], "crop_settings": [], "tok_a@32": [], "tok_b@32": [], "caption": []}
        for key, members in iter_shard(source):
            rows["key"].append(key)
            rows["shard"].append(source.index)
            for col in ("crop_settings", "tok_a@32", "tok_b@32"):
                rows[col].append(decode_npy(members[col][1]).tolist())
            rows["caption"].append(members["caption"][1].decode())
        schema = pa.schema([
            ("key", pa.string()), ("shard", pa.int32()), ("crop_settings", pa.list_(pa.list_(pa.int64()))),
            ("tok_a@32", pa.list_(pa.list_(pa.int16()))), ("tok_b@32", pa.list_(pa.list_(pa.int16()))),
            ("caption", pa.string()),
        ])
        pq.write_table(pa.table(rows, schema=schema), export / f"part-{source.index:06d}.parquet")
    _, psources, pdecoder, *_ = components(str(tmp_path), layout="parquet")
    assert [s.index for s in psources] == [0, 1]
    from_parquet = raw_samples(psources, pdecoder)
    assert from_parquet.keys() == from_tars.keys() and len(from_tars) == 10
    for key, sample in from_tars.items():
        for name, value in sample.items():
            np.testing.assert_array_equal(from_parquet[key][name], value)


def test_ml4m_layout_root_without_ledger_is_read(tmp_path):
    root = str(tmp_path)
    write_token_root(root, n_shards=2, per_shard=4, ledger=False, shard_name="shard-{:05d}.tar")
    _, sources, *_ = components(root)
    assert [s.index for s in sources] == [0, 1]
    assert sources[1].urls["tok_a@32"].endswith("tok_a@32/shard-00001.tar")
    assert sum(1 for s in sources for _ in iter_shard(s)) == 8


def keys_of(batch_ids):
    return {tuple(row) for row in batch_ids.tolist()}


@pytest.mark.parametrize("n_shards,world,workers", [(6, 2, 2), (2, 2, 2)])
def test_ranks_and_workers_split_the_data_without_overlap(tmp_path, n_shards, world, workers):
    # Identify samples by their full tok_a row (unique with overwhelming probability).
    root = str(tmp_path)
    write_token_root(root, n_shards=n_shards, per_shard=8, n_crops=1)
    seen = []
    for rank in range(world):
        _, sources, decoder, masker, kw = components(root, rank=rank, world_size=world, repeat=False, shuffle_buffer=4)
        ds = TokenShardDataset(sources, decoder, masker, **kw)
        for batch in TokenLoader(ds, num_workers=workers):
            seen.extend(tuple(r) for r in batch["tok_a@32"]["labels"].tolist())
    assert len(seen) == n_shards * 8 and len(set(seen)) == len(seen)


def test_same_seed_same_batches_other_seed_other_batches(tmp_path):
    root = str(tmp_path)
    write_token_root(root, n_shards=2, per_shard=12)

    def first_batches(seed):
        _, sources, decoder, masker, kw = components(root, seed=seed)
        loader = TokenLoader(TokenShardDataset(sources, decoder, masker, **kw), num_workers=0)
        out = []
        for i, batch in enumerate(loader):
            out.append(torch.cat([batch[m]["input_mask"].flatten() for m in batch]).int())
            if i == 5:
                return torch.stack(out)

    assert torch.equal(first_batches(0), first_batches(0))
    assert not torch.equal(first_batches(0), first_batches(1))


def test_loader_resumes_at_the_exact_next_batch(tmp_path):
    root = str(tmp_path)
    write_token_root(root, n_shards=3, per_shard=10)
    _, sources, decoder, masker, kw = components(root)

    def fresh():
        return TokenLoader(TokenShardDataset(sources, decoder, masker, **kw), num_workers=2)

    reference = []
    for i, batch in enumerate(fresh()):
        reference.append(batch)
        if i == 20:  # past an epoch boundary (30 samples = 7.5 batches per epoch)
            break
    interrupted = fresh()
    for i, _ in enumerate(interrupted):
        if i == 12:  # 13 batches consumed: an odd count, so worker rotation matters
            break
    state = json.loads(json.dumps(interrupted.state_dict()))
    resumed = fresh()
    resumed.load_state_dict(state)
    for i, batch in enumerate(resumed):
        expected = reference[13 + i]
        for m in batch:
            for field in batch[m]:
                assert torch.equal(batch[m][field], expected[m][field]), (i, m, field)
        if i == 7:
            break


@pytest.mark.parametrize("fmt", ["USTAR_FORMAT", "GNU_FORMAT", "PAX_FORMAT"])
def test_tar_reader_matches_stdlib_tarfile_for_every_format(tmp_path, fmt):
    import io
    import tarfile

    from prism4m.trainer.shards import iter_tar_members

    members = [("k" * 150, "npy", b"x" * 700), ("short", "txt", "naïve ✓".encode()), ("empty", "json", b"")]
    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w", format=getattr(tarfile, fmt)) as tar:
        for key, ext, data in members:
            if fmt == "USTAR_FORMAT" and len(key) > 99:
                key = key[:90]  # ustar cannot hold longer names without a '/' prefix split
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        expected = [(m.name.partition(".")[0], m.name.partition(".")[2], tar.extractfile(m).read()) for m in tar]
    assert list(iter_tar_members(str(path))) == expected


def test_tar_reader_refuses_member_paths(tmp_path):
    import io
    import tarfile

    from prism4m.trainer.shards import iter_tar_members

    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("../evil.npy")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValueError, match="refusing member name"):
        list(iter_tar_members(str(path)))


def test_unigram_baseline_matches_the_generated_distribution(tmp_path):
    from prism4m.trainer.evaluate import cross_entropy_of_counts, entropy_of_counts, unigram_counts

    # tok_a draws uniformly from 4 ids in each of 8 classes: 32 equally likely ids.
    root = str(tmp_path)
    write_token_root(root, n_shards=2, per_shard=200, n_crops=1)
    _, sources, decoder, *_ = components(root)
    train, held_out = unigram_counts(sources[:1], decoder), unigram_counts(sources[1:], decoder)
    assert abs(entropy_of_counts(train["tok_a@32"]) - np.log(32)) < 0.05
    assert int(train["tok_a@32"].sum()) == 200 * 16
    ce = cross_entropy_of_counts(held_out["tok_a@32"], train["tok_a@32"])
    assert entropy_of_counts(held_out["tok_a@32"]) <= ce < np.log(32) + 0.1


@pytest.mark.parametrize("name,kind", [("../evil.npy", "file"), ("a/b.npy", "file"), ("noext", "file"),
                                       ("bad key.npy", "file"), ("link.npy", "symlink"), ("dir", "dir")])
def test_tar_reader_refuses_what_the_store_refuses(tmp_path, name, kind):
    import io
    import tarfile

    from prism4m.contract.store import UnsafeTarMember, iter_tar_bytes
    from prism4m.trainer.shards import iter_tar_members

    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("ok.npy"), io.BytesIO(b""))
        info = tarfile.TarInfo(name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "ok.npy"
        elif kind == "dir":
            info.type = tarfile.DIRTYPE
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UnsafeTarMember):
        list(iter_tar_bytes(path.read_bytes(), str(path)))
    with pytest.raises(UnsafeTarMember, match="shard-000000.tar"):
        list(iter_tar_members(str(path)))
