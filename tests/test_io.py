"""crescent.utils.io: atomic writes under faults (full disk, no permission), torn JSONL lines."""
import errno
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import crescent.utils.io as io
from crescent.utils.io import (TornFileError, copy_file, ensure_writable, read_json, read_jsonl, write_json,
                               write_jsonl)

ROWS = [{"id": i, "text": f"row {i} ٣ −5 \\boxed{{{i}}}"} for i in range(3)]


def _no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("fail_in", ["write", "fsync", "replace"])
@pytest.mark.parametrize("kind", ["json", "jsonl"])
def test_full_disk_names_the_file_and_keeps_the_previous_version(tmp_path, monkeypatch, kind, fail_in):
    path = tmp_path / f"out.{kind}"
    write = write_json if kind == "json" else write_jsonl
    write(path, ROWS)
    before = path.read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if fail_in == "write":
        monkeypatch.setattr(io.os, "fdopen", lambda fd, *a, **k: _FullFile(fd))
    else:
        monkeypatch.setattr(io.os, fail_in, no_space)
    with pytest.raises(OSError, match=rf"could not write {re.escape(str(path))}.*No space left") as caught:
        write(path, ROWS[:1])
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and _no_temp_files(tmp_path)


class _FullFile:
    """A file object whose writes fail as on a full disk."""

    def __init__(self, fd):
        self.fd = fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_file_size_limit_for_real(tmp_path):
    """The kernel refuses the write (RLIMIT_FSIZE, as a full disk would): clear error, old file intact."""
    pytest.importorskip("resource")
    path = tmp_path / "big.jsonl"
    write_jsonl(path, ROWS)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from crescent.utils.io import write_jsonl
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_jsonl({str(path)!r}, [{{"text": "x" * 1000}}] * 100)
        except OSError as err:
            print(err.errno, err)
            sys.exit(3)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr[-2000:]
    assert out.stdout.startswith(f"{errno.EFBIG} ") and f"could not write {path}" in out.stdout
    assert path.read_bytes() == before and _no_temp_files(tmp_path)


@pytest.fixture
def unwritable(monkeypatch):
    """Make a folder unwritable: chmod 0o500, or (as root, who ignores permissions) refuse its temp files."""

    def apply(folder):
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o500)
            return
        real = io.tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and str(dir).startswith(str(folder)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(io.tempfile, "mkstemp", mkstemp)

    yield apply


def test_ensure_writable(tmp_path, unwritable):
    assert ensure_writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone
    ro = tmp_path / "ro"
    unwritable(ro)
    try:
        with pytest.raises(PermissionError, match=rf"paths.output_dir {re.escape(str(ro))} is not writable"):
            ensure_writable(ro, "paths.output_dir")
        with pytest.raises(PermissionError, match=rf"could not write {re.escape(str(ro / 'x.json'))}"):
            write_json(ro / "x.json", {})
    finally:
        ro.chmod(0o755)


def test_unwritable_output_dir_fails_before_any_model_loads(make_cfg, tmp_path, unwritable, monkeypatch):
    import crescent.backends
    import crescent.models.loading
    from crescent import pipeline

    fail = lambda *a, **k: pytest.fail("a model was loaded")  # noqa: E731
    monkeypatch.setattr(crescent.backends, "build_backend", fail)
    monkeypatch.setattr(crescent.models.loading, "load_model_and_tokenizer", fail)
    unwritable(tmp_path / "run")
    try:
        with pytest.raises(PermissionError, match=re.escape(str(tmp_path / "run"))):
            pipeline.run(make_cfg("debug=default"))
    finally:
        (tmp_path / "run").chmod(0o755)


def test_lone_surrogate_round_trips(tmp_path):
    row = {"text": "bad \ud800 byte"}  # json.loads can produce these from model-written escapes
    write_jsonl(tmp_path / "s.jsonl", [row])
    write_json(tmp_path / "s.json", row)
    assert list(read_jsonl(tmp_path / "s.jsonl")) == [row] and read_json(tmp_path / "s.json") == row


@pytest.mark.parametrize("cut", [2, 10, 25])
def test_torn_last_line_is_refused(tmp_path, cut):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, ROWS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])  # the writer died mid-line
    with pytest.raises(TornFileError, match=rf"{re.escape(str(path))}: the last line \(line 3\) is cut off"):
        list(read_jsonl(path))
    rows = []
    with pytest.raises(TornFileError):
        for r in read_jsonl(path):
            rows.append(r)
    assert rows == ROWS[:2]  # the complete rows before it, never the torn one
    path.write_bytes(data[:-1])  # only the newline lost: the row is whole
    assert list(read_jsonl(path)) == ROWS


def test_torn_multibyte_character(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"text": "٣'.encode()[:-1])
    with pytest.raises(TornFileError):
        list(read_jsonl(path))


def test_jsonl_without_final_newline_and_corrupt_lines(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}')  # hand-written: complete, no final newline
    assert list(read_jsonl(path)) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": \n{"a": 2}\n')
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: not a JSON line") as caught:
        list(read_jsonl(path))
    assert not isinstance(caught.value, TornFileError)
    path.write_text('{"a": 1}\n12\n')
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: expected a JSON object"):
        list(read_jsonl(path))


def test_copy_file_is_atomic(tmp_path, monkeypatch):
    src, dst = tmp_path / "src.jsonl", tmp_path / "out" / "dst.jsonl"
    write_jsonl(src, ROWS)
    copy_file(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    write_jsonl(src, ROWS * 2)
    monkeypatch.setattr(io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(OSError, match="could not write .*dst.jsonl"):
        copy_file(src, dst)
    assert list(read_jsonl(dst)) == ROWS and _no_temp_files(dst.parent)


@pytest.mark.parametrize("content", [b"", b"{\"a\": 1", b"\xff\xfe garbage", b"nul", b"{\"a\": \"\xe2\x82\"}"])
def test_read_json_names_a_damaged_file(tmp_path, content):
    """Issue 21 item 5: a garbled manifest / round JSON gives an error naming the file and the fix
    (before: a bare JSONDecodeError 'Expecting value: line 1 column 1')."""
    from crescent.utils.io import DamagedFileError, read_json

    path = tmp_path / "manifest.json"
    path.write_bytes(content)
    with pytest.raises(DamagedFileError, match="manifest.json is damaged: expected a JSON document.*delete .*rerun"):
        read_json(path)
    with pytest.raises(ValueError):  # still a ValueError for callers that catch that
        read_json(path)


def test_read_json_checks_the_expected_type(tmp_path):
    from crescent.utils.io import DamagedFileError, read_json, write_json

    path = tmp_path / "chunk.json"
    write_json(path, None)
    assert read_json(path) is None
    with pytest.raises(DamagedFileError, match="chunk.json is damaged: expected a JSON dict, got NoneType; use x"):
        read_json(path, expect=dict, fix="use x")
    write_json(path, {"a": 1})
    assert read_json(path, expect=dict) == {"a": 1}
