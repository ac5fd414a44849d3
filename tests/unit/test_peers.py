"""Peer admission (pure) and the kernel's peer credentials."""

from __future__ import annotations

import os
import socket

from cuprumd.peers import Peer, is_peer_allowed, peer_credentials

DAEMON = 990


def test_default_admits_the_daemon_user_and_root_only() -> None:
    assert is_peer_allowed(Peer(1, DAEMON, 5), None, [], DAEMON)
    assert is_peer_allowed(Peer(1, 0, 0), None, [], DAEMON)
    assert not is_peer_allowed(Peer(1, 1000, 1000), None, [], DAEMON)


def test_configured_uids_replace_the_default() -> None:
    assert is_peer_allowed(Peer(1, 1000, 1000), [1000], [], DAEMON)
    assert not is_peer_allowed(Peer(1, 0, 0), [1000], [], DAEMON)
    assert not is_peer_allowed(Peer(1, DAEMON, DAEMON), [], [], DAEMON)


def test_groups_admit_by_primary_or_supplementary_gid() -> None:
    assert is_peer_allowed(Peer(1, 1000, 50), [], [50], DAEMON)
    assert is_peer_allowed(Peer(1, 1000, 1000, (27, 50)), [], [50], DAEMON)
    assert not is_peer_allowed(Peer(1, 1000, 1000, (27,)), [], [50], DAEMON)


def test_peer_credentials_of_a_real_connection() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        peer = peer_credentials(a)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert peer.as_log() == {
        "peer_uid": os.getuid(),
        "peer_gid": os.getgid(),
        "peer_pid": os.getpid(),
    }
