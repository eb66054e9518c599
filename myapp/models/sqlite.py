"""SQLite's own record of its last commit, read without calling into SQLite.

In WAL mode every connection to a database file, in every process on the machine, shares the
WAL index: a file beside the database (``<database>-shm``) that each maps into memory. Its
header names the last commit (https://www.sqlite.org/walformat.html, "the WAL-index header"):
every commit, by any process, rewrites it before the commit returns, and SQLite's own readers
decide from it whether their page cache is still true. So rows read while the header said H are
the rows any read would give while it still says H.

:func:`commit_stamp` maps that header into this process once per database file; reading it is a
copy of 96 bytes of shared memory, with no system call and without letting go of the GIL. A call
into SQLite lets the GIL go, and with other threads running Python each one cost a signed-in page
several context switches to get it back (docs/architecture.md, "Reads kept until the next
commit"). ``Database`` keeps its per-request reads by this stamp.

What makes the mapping trustworthy, and is checked or kept here:

- the database is in WAL mode with normal locking (exclusive locking keeps the index in one
  connection's private memory, and writes nothing to the file);
- this process keeps a connection of its own open on the database, made before the file is
  mapped, never closed: while any connection is open no other may leave WAL mode, delete the WAL
  index or start it afresh (SQLite does those only when it is alone), so the mapped file stays
  the one every writer updates;
- the file is opened once and never closed: closing any descriptor of a file drops every POSIX
  lock this process holds on it, SQLite's own included. That holds for the mapping too: Python's
  ``mmap`` keeps a duplicate of the descriptor and closes it when the mapping is collected, so
  the mapping is kept for good as well, even of a file found unusable;
- a forked child keeps nothing: it has the mapping but not the locks, which are not inherited.
"""

import mmap
import os
import struct
import threading

from sqlalchemy import exc
from sqlalchemy.engine import Engine

# The WAL-index header: two copies of 48 bytes, the second written first. A reader that finds
# them equal has one commit's header, as SQLite's own readers do (walIndexTryHdr).
_HEADER = 48
_VERSION = 3007000  # iVersion, the first field, in the machine's byte order


class CommitStamp:
    """The WAL-index header of one database file, mapped into this process."""

    def __init__(self, mapping: mmap.mmap):
        self._mapping = mapping

    def read(self) -> bytes | None:
        """The header as it is now, or None while a commit is writing it (the copies differ)."""
        both = self._mapping[: 2 * _HEADER]
        first = both[:_HEADER]
        return first if first == both[_HEADER:] else None


# One per WAL-index file (by device and inode) for the life of the process, with the connection
# that keeps it trustworthy and the descriptor and the mapping (which holds a duplicate of the
# descriptor) that must never be closed. None where the file is not usable: remembered, so that no
# second descriptor is opened for it.
_STAMPS: dict[tuple[int, int], tuple[CommitStamp | None, object, int, mmap.mmap | None]] = {}
_LOCK = threading.Lock()
# Two copies that never agree: what a forked child reads instead of its parent's mapping.
_NEVER = bytes(_HEADER) + b"\xff" * _HEADER


def _in_child() -> None:
    """A forked child: every stamp it inherited reads None from now on, and is the one it gets
    again. Nothing inherited is closed: a SQLite connection must not be used in a child, not
    even to close it. The lock is new: a thread of the parent's may have held it at the fork, and
    no thread of the child's would ever let it go."""
    global _LOCK
    _LOCK = threading.Lock()
    for stamp, _keeper, _descriptor, _mapping in _STAMPS.values():
        if stamp is not None:
            stamp._mapping = _NEVER


os.register_at_fork(after_in_child=_in_child)


# URI parameters (``sqlite:///file:...?vfs=unix-excl&uri=true``) under which this process's
# SQLite keeps its WAL index out of the ``-shm`` file (the unix-excl, unix-none and unix-dotfile
# VFSes keep it in heap memory), or takes no lock on it: a ``-shm`` file left there by a process
# that died would then be mapped, and never change.
_INDEX_ELSEWHERE = frozenset({"vfs", "nolock", "immutable"})


def commit_stamp(engine: Engine) -> CommitStamp | None:
    """The commit stamp of the SQLite file ``engine`` reads, or None: another database, an
    in-memory one, or one SQLite keeps no shared WAL index for."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    if _INDEX_ELSEWHERE & {name.lower() for name in engine.url.query}:
        return None
    with _LOCK:
        connection = engine.raw_connection()
        try:
            try:
                index = _wal_index(connection.dbapi_connection)
            except engine.dialect.loaded_dbapi.Error as e:
                # SQLAlchemy's, as the read's own would be, so that an outage answers 503.
                raise exc.DBAPIError.instance(
                    "PRAGMA journal_mode", None, e, engine.dialect.loaded_dbapi.Error, dialect=engine.dialect
                ) from e
            if index is None:
                return None
            try:
                found = os.stat(index)
            except OSError:
                return None
            key = (found.st_dev, found.st_ino)
            if key in _STAMPS:
                return _STAMPS[key][0]
            # Ours for good from here: it holds the database open while the file is mapped.
            connection.detach()
            keeper, connection = connection, None
            descriptor, mapping, stamp = -1, None, None
            try:
                descriptor = os.open(index, os.O_RDONLY | os.O_CLOEXEC)
                mapping, stamp = _mapped(descriptor)
            except OSError:
                pass  # none, for good: kept as it is, as a usable one would be (nothing is closed)
            _STAMPS[key] = (stamp, keeper, descriptor, mapping)
            return stamp
        finally:
            if connection is not None:
                connection.close()


def _wal_index(dbapi_connection) -> str | None:
    """The path of the WAL index this connection shares, once it has read through it; None when
    it shares none."""
    cursor = dbapi_connection.cursor()
    try:
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            return None
        if cursor.execute("PRAGMA locking_mode").fetchone()[0].lower() != "normal":
            return None
        path = next((row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main"), "")
        if not path:
            return None
        # A read: the connection now has the index open, and holds the database with it.
        cursor.execute("SELECT count(*) FROM sqlite_master").fetchall()
        return path + "-shm"
    finally:
        cursor.close()


def _mapped(descriptor: int) -> tuple[mmap.mmap | None, CommitStamp | None]:
    """The file mapped through ``descriptor``, and its stamp if the file holds a WAL-index header
    SQLite wrote (else None). The caller keeps the mapping for good, usable or not: collected, it
    would close its duplicate of the descriptor, and with it this process's locks on the file."""
    if os.fstat(descriptor).st_size < 2 * _HEADER:
        return None, None
    mapping = mmap.mmap(descriptor, 2 * _HEADER, mmap.MAP_SHARED, mmap.PROT_READ)
    stamp = CommitStamp(mapping)
    for _ in range(100):  # a commit may be writing it right now
        header = stamp.read()
        if header is not None:
            version, is_init = struct.unpack_from("=I8xB", header)
            return mapping, (stamp if version == _VERSION and is_init == 1 else None)
    return mapping, None
