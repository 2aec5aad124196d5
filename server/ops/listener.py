"""Closing a listening socket without resetting connections the kernel already accepted.

On Linux, close() on a listening socket resets every connection still waiting in its accept queue:
the client completed the handshake, sent its request, and gets a connection reset. Under steady
load at shutdown that loses a request now and then. So, before closing: drop new connection
attempts with a socket filter (clients see a refused/retried connect, never a reset), let the
server accept what is queued, then close. Both steps are Linux-only; elsewhere they do nothing.
"""

from __future__ import annotations

import ctypes
import socket
import struct

_SO_ATTACH_FILTER = 26
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return a constant; 0 means "drop the packet"


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def refuse_new_connections(sock) -> bool:
    """Drop every new SYN (and unfinished handshake) reaching this listener; queued connections
    are already established and unaffected. True if the filter is in place."""
    program = (_SockFilter * 1)(_SockFilter(_BPF_RET_K, 0, 0, 0))
    fprog = _SockFprog(1, ctypes.cast(program, ctypes.POINTER(_SockFilter)))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(fprog))
    except (OSError, AttributeError):
        return False
    return True


def queued_connections(sock) -> int:
    """Connections waiting in the accept queue (tcp_info.tcpi_unacked of a listener, what `ss`
    shows as Recv-Q); 0 where that cannot be read."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError):
        return 0
    return struct.unpack_from("I", info, 24)[0] if len(info) >= 28 else 0
