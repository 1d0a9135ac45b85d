"""How a refusal over other training files says what differs: one file, or a few names, never the whole record
(a dataset folder may hold thousands of shards)."""

from mt.data.provenance import files_difference, same_files


def shards(count: int, *, size: int = 100) -> list[list]:
    return [[f"train/data-{i:05d}.arrow", size, f"{i:032x}"] for i in range(count)]


def test_a_folder_of_many_shards_is_summed_up_in_a_few_names():
    recorded = [shards(2000)]
    found = [shards(2000)[:1999] + [["train/data-99999.arrow", 100, "f" * 32]]]
    assert not same_files(recorded, found)
    message = files_difference(recorded, found)
    assert message == (
        "the training data: 2000 files here but 2000 recorded "
        "(missing train/data-01999.arrow; new train/data-99999.arrow)"
    )
    fewer = [shards(2000)[5:]]
    message = files_difference(recorded, fewer)
    assert message == (
        "the training data: 1995 files here but 2000 recorded (missing train/data-00000.arrow, "
        "train/data-00001.arrow, train/data-00002.arrow and 2 more)"
    )


def test_a_changed_file_is_named_with_its_size_and_digest_and_the_corpus_counted():
    recorded = [[["train.de", 10, "a" * 32], ["train.en", 12, "b" * 32]], ["wmt14", "de-en"]]
    changed = [[["train.de", 10, "a" * 32], ["train.en", 12, "c" * 32]], ["wmt14", "de-en"]]
    assert files_difference(recorded, changed) == (
        f"corpus 0: train.en is 12 bytes, digest {'c' * 12} here but was 12 bytes, digest {'b' * 12}"
    )
    older = [[["train.de", 10], ["train.en", 11]], ["wmt14", "de-en"]]  # a checkpoint from before the digests
    assert (
        files_difference(older, changed) == "corpus 0: train.en is 12 bytes, digest cccccccccccc here but was 11 bytes"
    )
    other_hub = [recorded[0], ["wmt14", "fr-en"]]
    assert files_difference(recorded, other_hub) == "corpus 1: ['wmt14', 'fr-en'] here but ['wmt14', 'de-en'] recorded"
    assert files_difference(recorded, recorded[:1]) == "1 corpora here but 2 recorded"
