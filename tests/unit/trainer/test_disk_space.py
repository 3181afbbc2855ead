"""Free space before a download: refused with the numbers before the first byte, retryable (the node's disk)."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_trainer.core.disk import MARGIN_BYTES, check_fits, ensure_free_space
from finetune_trainer.core.errors import INTERNAL_ERROR_EXIT_CODE, InsufficientDisk

GIB = 2**30


def test_a_download_that_does_not_fit_is_refused_with_what_it_needs_and_what_is_free() -> None:
    with pytest.raises(InsufficientDisk) as refused:
        check_fits(16 * GIB, 10 * GIB, "s3://models/llama/", Path("/work/model"))
    message = str(refused.value)
    assert "needs 16.00 GiB" in message and "10.00 GiB is free" in message and "s3://models/llama/" in message
    assert refused.value.code == "InsufficientDisk" and refused.value.exit_code == INTERNAL_ERROR_EXIT_CODE


def test_the_margin_counts_and_what_fits_passes() -> None:
    check_fits(GIB, GIB + MARGIN_BYTES, "x", Path("/tmp"))
    with pytest.raises(InsufficientDisk):
        check_fits(GIB, GIB + MARGIN_BYTES - 1, "x", Path("/tmp"))


def test_the_real_filesystem_is_asked_about_the_nearest_existing_folder(tmp_path: Path) -> None:
    ensure_free_space(0, "nothing", tmp_path / "not" / "yet" / "made")  # a folder the download will create
    with pytest.raises(InsufficientDisk, match="free there"):
        ensure_free_space(2**62, "an exabyte", tmp_path)  # more than any disk here


def test_inputs_larger_than_the_requested_disk_are_the_users_error_with_the_size_to_ask_for() -> None:
    from finetune_trainer.core.errors import USER_ERROR_EXIT_CODE, DiskRequestTooSmall
    from finetune_trainer.memory.disk import check_request

    downloads = [("baseModel.uri model repo 'acme/big'", 30 * GIB), ("dataset.train.uri", 2 * GIB)]
    with pytest.raises(DiskRequestTooSmall) as refused:
        check_request(downloads, "20Gi")
    message = str(refused.value)
    assert "resources.ephemeralStorage is 20Gi" in message and "must download 32.00 GiB" in message
    assert "'acme/big': 30.00 GiB" in message and "at least 41Gi" in message  # 32 * 1.25 + 1
    assert refused.value.exit_code == USER_ERROR_EXIT_CODE
    check_request(downloads, "32Gi")  # exactly what the inputs take: not refused (checkpoints are on top)
    check_request(downloads, "")  # no request: the data check plans the disk


def test_a_requested_disk_that_is_no_quantity_names_the_field() -> None:
    from finetune_trainer.core.errors import ConfigInvalid
    from finetune_trainer.memory.disk import check_request

    with pytest.raises(ConfigInvalid, match=r"resources\.ephemeralStorage"):
        check_request([("x", 1)], "lots")


def test_a_full_disk_anywhere_is_the_retryable_insufficient_disk() -> None:
    import errno

    from finetune_trainer.core.errors import as_trainer_error

    failure = as_trainer_error(OSError(errno.ENOSPC, "No space left on device", "/work/data/train.jsonl"))
    assert isinstance(failure, InsufficientDisk) and "/work/data/train.jsonl" in failure.message
    assert as_trainer_error(OSError(errno.EACCES, "denied")).code == "InternalError"
