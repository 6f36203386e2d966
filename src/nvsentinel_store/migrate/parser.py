"""Big export files read and parsed by a separate Python process.

Parsing costs about as much CPU per document as the database's work; in the
importing process it would compete for the GIL with the writer thread, in
its own process it runs on another core. The child is this interpreter
(``sys.executable``) running :func:`write_batch_frames`; the parent reads its
frames in :func:`file_batches_in_child`.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from nvsentinel_store.errors import ImportFailedError
from nvsentinel_store.migrate.batches import Batch, Pending, batches
from nvsentinel_store.migrate.sources import read_file

#: Lines of the child's stderr quoted when it ends without its end frame.
_STDERR_TAIL_LINES: Final = 3


def write_batch_frames(path: str, collection: str, batch_size: int, payload: bool) -> None:
    """The child's work: pickled frames of one file's batches on stdout, then an end frame.

    Frames are plain tuples (cheaper to pickle than the dataclasses):
    ``("batch", read, pendings, rejects, payload)``, then ``("end",)`` or
    ``("error", message)``.
    """
    out = sys.stdout.buffer
    try:
        for batch in batches(read_file(Path(path)), collection, batch_size, payload):
            pendings = [(p.where, p.raw, p.id, p.text, p.event_id) for p in batch.pendings]
            frame = ("batch", batch.read, pendings, batch.rejects, batch.payload)
            pickle.dump(frame, out, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(("end",), out)
    except ImportFailedError as err:
        pickle.dump(("error", str(err)), out)
    except Exception as err:
        pickle.dump(("error", f"{path}: reading failed: {type(err).__name__}: {err}"), out)
    out.flush()


#: What the child runs: this module by its own name, so that a move cannot break it.
_CHILD_CODE: Final = (
    f"import sys; from {__name__} import write_batch_frames; "
    "write_batch_frames(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == '1')"
)


def file_batches_in_child(
    path: Path, collection: str, batch_size: int, payload: bool
) -> Iterator[Batch]:
    """The batches of a file, read and parsed by a child process.

    A child that reports an error, or ends without its end frame, raises
    :class:`~nvsentinel_store.errors.ImportFailedError` naming the file.
    """
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD_CODE,
                str(path),
                collection,
                str(batch_size),
                "1" if payload else "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdout is not None
        try:
            while True:
                try:
                    frame = pickle.load(proc.stdout)
                except EOFError:
                    proc.wait()
                    errors.seek(0)
                    lines = errors.read().decode(errors="replace").strip().splitlines()
                    raise ImportFailedError(
                        f"{path}: the parser process ended early (exit {proc.returncode}): "
                        + " / ".join(lines[-_STDERR_TAIL_LINES:])
                    ) from None
                if frame[0] == "end":
                    return
                if frame[0] == "error":
                    raise ImportFailedError(frame[1])
                _, read, pendings, rejects, data = frame
                yield Batch(read, [Pending(*p) for p in pendings], rejects, data)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.terminate()
            proc.wait()
