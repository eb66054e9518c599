"""New request ids: random, drawn in batches, never the same twice, in threads or after a fork."""

import os
import threading
import warnings

from myapp import observability
from myapp.observability import new_request_id


def test_ids_are_32_hex_digits_and_never_repeat_across_batches_and_threads():
    seen, lock = [], threading.Lock()

    def draw():
        mine = [new_request_id() for _ in range(3 * observability._ID_BATCH)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 * 3 * observability._ID_BATCH == len(set(seen))
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in seen)


def test_a_forked_process_never_hands_out_its_parents_leftover_ids():
    observability._fresh_ids.clear()
    new_request_id()  # a fresh batch: the parent now holds 255 ids it has not handed out
    left_over = set(observability._fresh_ids)
    assert len(left_over) == observability._ID_BATCH - 1
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12 warns of forking with threads; this child only writes
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover (the child's result travels through the pipe)
        os.close(read)
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        childs = pipe.read()
    os.waitpid(child, 0)
    assert len(childs) == 32 and childs not in left_over
