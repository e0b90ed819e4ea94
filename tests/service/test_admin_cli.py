"""`gradhealth admin`: the key alone on stdout, clear errors on stderr, exit codes for scripts."""

from __future__ import annotations

from pathlib import Path

from gradhealth.store import keys
from gradhealth.store.db import session_scope

from .conftest import admin, base_env, settings_from


def test_create_project_and_key_print_only_the_key(tmp_path: Path) -> None:
    env = base_env(GRADHEALTH_DATA_DIR=str(tmp_path))
    created = admin(env, "create-project", "ml-team")
    assert created.returncode == 0, created.stderr
    owner = created.stdout.strip()
    assert created.stdout == owner + "\n" and owner.startswith("ghk_")
    reader = admin(env, "create-key", "ml-team", "--scope", "read")
    assert reader.returncode == 0 and reader.stdout.count("\n") == 1
    with session_scope(settings_from(env)) as session:
        owner_p, reader_p = keys.authenticate(session, owner), keys.authenticate(session, reader.stdout.strip())
    assert owner_p is not None and owner_p.allows("admin")
    assert reader_p is not None and reader_p.scopes == frozenset({"read"})
    assert owner_p.project_id == reader_p.project_id

    again = admin(env, "create-project", "ml-team")
    assert again.returncode == 2 and again.stdout == "" and "already exists" in again.stderr
    missing = admin(env, "create-key", "nobody")
    assert missing.returncode == 2 and missing.stdout == "" and "no project named 'nobody'" in missing.stderr


def test_data_dir_flag_acts_on_that_folder(tmp_path: Path) -> None:
    """`admin --data-dir D` and `serve --data-dir D` mean the same folder, whatever the environment says."""
    elsewhere, target = tmp_path / "env-dir", tmp_path / "flag-dir"
    env = base_env(GRADHEALTH_DATA_DIR=str(elsewhere))
    created = admin(env, "--data-dir", str(target), "create-project", "flagged")
    assert created.returncode == 0, created.stderr
    with session_scope(settings_from(base_env(GRADHEALTH_DATA_DIR=str(target)))) as session:
        principal = keys.authenticate(session, created.stdout.strip())
    assert principal is not None and principal.allows("admin")
    assert (target / "gradhealth.db").is_file() and not (elsewhere / "gradhealth.db").exists()
