"""SO_PEERCRED, both ways: servers refuse other uids, clients refuse servers of other uids."""

from __future__ import annotations

import os
import socket

import pytest

from dominoes._runtime._peercred import (
    UCRED,
    ForeignServerError,
    Peer,
    check_server,
    peer,
    peer_refusal,
)


class Stranger:
    """A socket whose peer is another uid (what getsockopt reports for one)."""

    def __init__(self, uid: int) -> None:
        self.uid = uid

    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes:
        assert (level, option, buflen) == (socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
        return UCRED.pack(4242, self.uid, self.uid)


class Closed:
    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes:
        raise OSError(9, "Bad file descriptor")


def other_uid() -> int:
    return os.geteuid() + 1


def test_a_socketpair_peer_is_this_process() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert peer(a) == Peer(os.getpid(), os.geteuid(), os.getegid())
        assert peer_refusal(a, "service 'kv'", "control") is None
        check_server(b, "pair")


def test_another_uid_is_refused_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    uid = other_uid()
    refusal = peer_refusal(Stranger(uid), "service 'kv'", "control")
    assert refusal == (
        f"PermissionError: service 'kv' runs as uid {os.geteuid()}; "
        f"a process of uid {uid} may not attach to it (only the same uid can)"
    )
    assert f"control: refused pid 4242 of uid {uid}" in caplog.text


def test_no_credentials_is_a_refusal() -> None:
    assert "cannot read the peer's credentials" in str(peer_refusal(None, "x", "y"))
    assert "Bad file descriptor" in str(peer_refusal(Closed(), "x", "y"))


def test_a_server_of_another_uid_is_not_trusted() -> None:
    uid = other_uid()
    with pytest.raises(ForeignServerError, match=f"served by uid {uid} \\(pid 4242\\)"):
        check_server(Stranger(uid), "/tmp/x/control.sock")
    with pytest.raises(PermissionError, match="cannot tell who serves"):
        check_server(Closed(), "/tmp/x/control.sock")
