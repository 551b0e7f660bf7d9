"""meshd/keyring.py and the replicated ring's rules (server/keyring.py)."""

from __future__ import annotations

import base64
import os

import pytest

from meshd.keyring import KeyringError, fingerprint, key_bytes, load, save, seal, unseal
from meshd.server.keyring import KeyringState
from meshd.server.mesh_state import CommandRejectedError
from meshd.structs import KeyringOp


def key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_key_validation():
    assert len(key_bytes(key())) == 32
    for bad, reason in (("@@", "not base64"), (base64.b64encode(b"x" * 20).decode(), "20 bytes")):
        with pytest.raises(KeyringError, match=reason):
            key_bytes(bad)


def test_seal_opens_with_any_ring_key_and_no_other():
    k1, k2 = key(), key()
    sealed = seal([k2, k1])
    assert unseal(sealed, [k1]) == [k2, k1]
    assert unseal(sealed, [k2]) == [k2, k1]
    assert unseal(sealed, [key()]) is None
    assert k1 not in "".join(sealed) and fingerprint(k1) != fingerprint(k2)


def test_save_and_load(tmp_path):
    k1 = key()
    assert load(str(tmp_path)) is None
    save(str(tmp_path), [k1])
    assert load(str(tmp_path)) == [k1]
    assert oct((tmp_path / "keyring.json").stat().st_mode & 0o777) == "0o600"


def test_rotation_rules():
    k1, k2 = key(), key()
    st = KeyringState()
    changed: set[str] = set()
    with pytest.raises(CommandRejectedError, match="no encryption key"):
        st.apply(KeyringOp(Op="install", Key=k2), 1, changed)
    st.apply(KeyringOp(Op="install", Key=k2, Current=[k1]), 2, changed)
    assert st.keys == [k1, k2] and st.version == 2
    with pytest.raises(CommandRejectedError, match="not allowed"):
        st.apply(KeyringOp(Op="remove", Key=k1), 3, changed)
    with pytest.raises(CommandRejectedError, match="not in the keyring"):
        st.apply(KeyringOp(Op="use", Key=key()), 3, changed)
    assert st.keys == [k1, k2]
    st.apply(KeyringOp(Op="use", Key=k2), 4, changed)
    st.apply(KeyringOp(Op="remove", Key=k1), 5, changed)
    assert st.keys == [k2] and st.version == 5
    st.apply(KeyringOp(Op="install", Key=k2), 6, changed)  # already there: no new version
    assert st.version == 5
