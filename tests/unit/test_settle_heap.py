"""`preloop serve` and `preloop worker` settle their heap once started (`backend.cli.settle_heap`)."""

import gc

from backend.cli import YOUNG_COLLECTION_EVERY, settle_heap


def test_settle_heap_freezes_what_exists_and_spaces_young_collections() -> None:
    before = gc.get_threshold()
    kept = [object() for _ in range(10)]  # noqa: F841 - alive while the heap settles
    try:
        gc.unfreeze()
        settle_heap()
        assert gc.get_freeze_count() > 1000  # the modules and objects built so far
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY > 700
        collections = gc.get_stats()[0]["collections"]
        garbage = [[n] for n in range(YOUNG_COLLECTION_EVERY // 2)]  # fewer than the threshold: no collection
        assert gc.get_stats()[0]["collections"] == collections
        del garbage
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
