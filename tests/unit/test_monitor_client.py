"""``dominoes monitor``'s telnet side, against a scripted server on a socketpair."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from dominoes._runtime._monitor import (
    IAC,
    NAWS,
    SB,
    SE,
    TTYPE,
    WILL,
    _Session,
    monitor_main,
    telnet_split,
)

ECHO = 1


def test_telnet_split_separates_text_and_commands() -> None:
    data = b"ab" + bytes([IAC, WILL, ECHO]) + b"c" + bytes([IAC, IAC]) + b"d"
    assert telnet_split(data) == (b"abc\xffd", [bytes([IAC, WILL, ECHO])], b"")
    sub = bytes([IAC, SB, TTYPE, 1, IAC, SE])
    assert telnet_split(b"x" + sub + b"y") == (b"xy", [sub], b"")


@pytest.mark.parametrize("cut", range(1, 6))
def test_telnet_split_keeps_a_command_cut_short_for_later(cut: int) -> None:
    sub = bytes([IAC, SB, TTYPE, 1, IAC, SE])
    text, commands, rest = telnet_split(b"x" + sub[:cut])
    assert (text, commands, rest) == (b"x", [], sub[:cut])
    assert telnet_split(rest + sub[cut:] + b"z") == (b"z", [sub], b"")


def serve(server: socket.socket, script: list[tuple[bytes, bytes]], got: list[bytes]) -> None:
    """For each (wait for this, then send that): read until it came, then answer."""
    buf = b""
    with server:
        server.settimeout(10)
        for expect, answer in script:
            while expect not in buf:
                chunk = server.recv(4096)
                if not chunk:
                    got.append(buf)
                    return
                buf += chunk
            buf = buf[buf.index(expect) + len(expect) :]
            server.sendall(answer)
    got.append(buf)


def session(script: list[tuple[bytes, bytes]], stdin: bytes) -> tuple[int, bytes, list[bytes]]:
    """Run a session on a pipe's input to the end; its code, its output, what the server saw."""
    client, server = socket.socketpair()
    got: list[bytes] = []
    thread = threading.Thread(target=serve, args=(server, script, got))
    thread.start()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, stdin)
    os.close(in_w)
    try:
        with client:
            code = _Session(client, in_r, out_w).run()
    finally:
        os.close(in_r)
        os.close(out_w)
        thread.join(10)
    with os.fdopen(out_r, "rb") as f:
        return code, f.read(), got


def test_a_piped_session_sends_lines_as_enter_and_leaves_with_ctrl_d() -> None:
    hello = bytes([IAC, WILL, TTYPE, IAC, SB, TTYPE, 0]) + b"xterm" + bytes([IAC, SE])
    naws = bytes([IAC, WILL, NAWS, IAC, SB, NAWS, 0, 200, 0, 50, IAC, SE])
    script = [
        (hello + naws, bytes([IAC, WILL, ECHO]) + b"monitor >>> "),
        (b"ps\r", b"ps\r\n1 tasks running\r\nmonitor >>> "),
        (b"\x04", b""),  # Ctrl-D at the end of the input: the server closes
    ]
    code, out, _ = session(script, b"ps\n")
    assert code == 0
    assert out == b"monitor >>> ps\r\n1 tasks running\r\nmonitor >>> "


def test_input_from_a_file_or_dev_null_is_sent_then_the_session_ends(tmp_path: Path) -> None:
    """epoll refuses regular files and /dev/null; such input is read at once."""
    for path, data, expect in (
        (tmp_path / "commands", b"ps\n", b"ps\r\x04"),
        (Path("/dev/null"), b"", b"\x04"),
    ):
        if data:
            path.write_bytes(data)
        client, server = socket.socketpair()
        seen: list[bytes] = []

        def record(server: socket.socket = server, seen: list[bytes] = seen) -> None:
            buf = b""
            with server:
                server.settimeout(10)
                while b"\x04" not in buf and (chunk := server.recv(4096)):
                    buf += chunk
            seen.append(buf)

        thread = threading.Thread(target=record)
        thread.start()
        out_r, out_w = os.pipe()
        fd = os.open(path, os.O_RDONLY)
        try:
            with client:
                assert _Session(client, fd, out_w).run() == 0
        finally:
            os.close(fd)
            os.close(out_w)
            os.close(out_r)
            thread.join(10)
        assert seen
        assert seen[0].endswith(expect)


def test_ctrl_d_leaves_the_repl_first_then_the_console() -> None:
    script = [
        (b"console\r", b"\r\n>>> "),
        (b"\x04", b"\r\nThe console session is closed.\r\nmonitor >>> "),
        (b"\x04", b""),
    ]
    code, out, _ = session(script, b"console\n")
    assert code == 0
    assert out.endswith(b"The console session is closed.\r\nmonitor >>> ")


def test_a_refusal_is_an_error(capfd: pytest.CaptureFixture[str]) -> None:
    refusal = b"dominoes: PermissionError: the monitor of replica 0 runs as uid 0; ...\r\n"
    code, out, _ = session([(b"", refusal)], b"")
    assert (code, out) == (1, b"")
    assert "dominoes: PermissionError: the monitor" in capfd.readouterr().err


def test_no_monitor_is_an_error(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert monitor_main(tmp_path, 3) == 1
    err = capfd.readouterr().err
    assert f"no monitor at {tmp_path / 'monitor-3.sock'}" in err
    assert "--monitor" in err
