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
