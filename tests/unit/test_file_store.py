"""The flags file store: reading, atomic writes, locked read-edit-write cycles."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from canaryws.adapters.files import stat_signature
from canaryws.adapters.flags.file_store import (
    read_document,
    read_flags_bytes,
    update_document,
    write_document_atomic,
)
from canaryws.core.flagdoc import (
    FlagEditError,
    FlagsDocument,
    FlagsDocumentError,
    compute_revision,
    encode_flags_document,
    validate_flags_data,
    with_enabled,
    with_rollout,
)

REPO_FLAGS = Path(__file__).resolve().parents[2] / "flags" / "features.json"


@pytest.fixture
def flags_file(tmp_path: Path) -> Path:
    path = tmp_path / "features.json"
    path.write_bytes(REPO_FLAGS.read_bytes())
    return path


def test_read_document(flags_file: Path) -> None:
    doc = read_document(flags_file)
    assert doc.feature_names() == ["records.strict", "records.shadow"]
    raw, signature = read_flags_bytes(flags_file)
    assert raw == flags_file.read_bytes()
    assert signature == stat_signature(flags_file)


def test_read_document_names_the_path_when_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(FlagsDocumentError) as info:
        read_document(missing)
    assert str(info.value) == f"{missing}: cannot read flags file: No such file or directory"
    assert stat_signature(missing) is None


def test_read_document_names_the_path_when_invalid(flags_file: Path) -> None:
    flags_file.write_text('{"version": 2, "features": {"name": "a"}}')
    with pytest.raises(FlagsDocumentError) as info:
        read_document(flags_file)
    assert str(info.value) == f'{flags_file}: features: Input should be a valid list (got {{"name": "a"}})'


def test_read_document_keeps_the_problems_of_single_flags(flags_file: Path) -> None:
    flags_file.write_text('{"version": 2, "features": [{"name": "a", "enabled": "yes", "strategies": []}]}')
    doc = read_document(flags_file)
    assert [str(p) for p in doc.problems] == ['features[0].enabled: Input should be a valid boolean (got "yes")']


def test_read_document_of_a_directory(tmp_path: Path) -> None:
    with pytest.raises(FlagsDocumentError, match="cannot read flags file: Is a directory"):
        read_document(tmp_path)


def test_write_is_atomic_keeps_the_mode_and_leaves_no_temp_files(flags_file: Path) -> None:
    os.chmod(flags_file, 0o640)
    doc = with_rollout(read_document(flags_file), "records.strict", 25)
    before_inode = os.stat(flags_file).st_ino
    write_document_atomic(flags_file, doc)
    assert flags_file.read_bytes() == encode_flags_document(doc)
    assert stat.S_IMODE(os.stat(flags_file).st_mode) == 0o640
    assert os.stat(flags_file).st_ino != before_inode  # replaced, not rewritten in place
    assert sorted(p.name for p in flags_file.parent.iterdir()) == ["features.json"]


def test_write_creates_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    doc = read_document(REPO_FLAGS)
    write_document_atomic(path, doc)
    assert read_document(path) == doc
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_write_follows_a_symlink(flags_file: Path) -> None:
    link = flags_file.parent / "link.json"
    link.symlink_to(flags_file.name)
    doc = with_enabled(read_document(link), "records.shadow", True)
    write_document_atomic(link, doc)
    assert link.is_symlink()
    assert read_document(flags_file) == doc


def test_write_into_a_missing_directory_is_a_flags_error(tmp_path: Path) -> None:
    with pytest.raises(FlagsDocumentError, match="cannot write flags file: No such file or directory"):
        write_document_atomic(tmp_path / "missing" / "features.json", read_document(REPO_FLAGS))


def test_update_returns_old_and_new_and_writes(flags_file: Path) -> None:
    old, new = update_document(flags_file, lambda doc: with_rollout(doc, "records.strict", 5))
    assert old == read_document(REPO_FLAGS)
    assert new == with_rollout(old, "records.strict", 5)
    assert read_document(flags_file) == new
    assert (flags_file.parent / ".features.json.lock").exists()


def test_update_without_change_does_not_touch_the_file(flags_file: Path) -> None:
    before = stat_signature(flags_file)
    old, new = update_document(flags_file, lambda doc: with_rollout(doc, "records.strict", 0))
    assert old.revision == new.revision
    assert stat_signature(flags_file) == before


def test_a_failing_edit_leaves_the_file_alone(flags_file: Path) -> None:
    raw = flags_file.read_bytes()
    with pytest.raises(FlagEditError, match="unknown flag"):
        update_document(flags_file, lambda doc: with_rollout(doc, "nope", 5))
    assert flags_file.read_bytes() == raw


def test_an_edit_producing_an_invalid_document_is_not_written(flags_file: Path) -> None:
    raw = flags_file.read_bytes()

    def corrupt(doc: FlagsDocument) -> FlagsDocument:
        data = validate_flags_data(doc.data).data
        data["features"] = {"records.strict": data["features"][0]}
        return FlagsDocument(data=data, revision=compute_revision(data))

    with pytest.raises(FlagsDocumentError, match="features: Input should be a valid list"):
        update_document(flags_file, corrupt)
    assert flags_file.read_bytes() == raw


def _add_features(path: str, writer: int, count: int) -> None:
    for i in range(count):

        def add(doc: FlagsDocument, name: str = f"w{writer}.f{i}") -> FlagsDocument:
            data = validate_flags_data(doc.data).data
            data["features"].append({"name": name, "enabled": True, "strategies": []})
            return validate_flags_data(data)

        update_document(Path(path), add)


def test_concurrent_writers_do_not_lose_updates(flags_file: Path) -> None:
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_add_features, args=(str(flags_file), w, 15)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=60)
        assert process.exitcode == 0
    names = read_document(flags_file).feature_names()
    assert len(names) == 2 + 4 * 15
    assert {f"w{w}.f{i}" for w in range(4) for i in range(15)} <= set(names)
