"""SO_PEERCRED, both ways: servers refuse other uids, clients refuse servers of other uids."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from dominoes._runtime import _peercred
from dominoes._runtime._peercred import (
    UCRED,
    ForeignServerError,
    Peer,
    check_server,
    connect_checked,
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


# --- connect_checked: what every client of a service socket connects with ----------------------


def test_connect_checked_gives_a_connected_socket_to_a_server_of_this_uid(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        with connect_checked(path, 5.0) as sock:
            assert sock.gettimeout() == 5.0
            assert not sock.get_inheritable()
            conn, _ = server.accept()
            with conn:
                sock.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_connect_checked_raises_what_the_connect_raised(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        connect_checked(tmp_path / "absent.sock", 1.0)
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))  # bound, never listening: what a killed server leaves
    with pytest.raises(ConnectionRefusedError):
        connect_checked(stale, 1.0)


def test_connect_checked_refuses_a_server_of_another_uid_and_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[socket.socket] = []

    def stranger(sock: socket.socket) -> Peer:
        seen.append(sock)
        return Peer(4242, other_uid(), other_uid())

    monkeypatch.setattr(_peercred, "peer", stranger)
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        with pytest.raises(ForeignServerError, match=f"served by uid {other_uid()}"):
            connect_checked(path, 1.0)
    [sock] = seen
    assert sock.fileno() == -1  # closed: nothing was sent, nothing is left open
