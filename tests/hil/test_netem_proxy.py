"""The rig's userspace UDP proxy: real datagrams on 127.0.0.1 through each impairment."""
from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.netem import CLEAN, DOWN, UP, Impairment, ImpairmentError, UdpProxy, decide


class EchoServer:
    """A UDP server on 127.0.0.1 that records what it got (with arrival time) and echoes it back."""

    def __init__(self, echo: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.echo = echo
        self.received: list[tuple[float, bytes]] = []
        self.peers: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data))
            self.peers.add(peer)
            if self.echo:
                self.sock.sendto(b"re:" + data, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def client():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    yield sock
    sock.close()


def send_numbered(sock: socket.socket, port: int, count: int, pause: float = 0.0) -> dict[int, float]:
    sent = {}
    for index in range(count):
        sent[index] = time.monotonic()
        sock.sendto(b"%06d" % index, ("127.0.0.1", port))
        if pause:
            time.sleep(pause)
    return sent


def drain(sock: socket.socket, quiet_s: float = 0.4, limit_s: float = 5.0) -> list[bytes]:
    got, deadline, last = [], time.monotonic() + limit_s, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet_s:
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            continue
        got.append(data)
        last = time.monotonic()
    return got


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def indices(payloads) -> list[int]:
    return [int(p.removeprefix(b"re:")) for p in payloads]


def test_a_clean_link_relays_every_datagram_both_ways_in_order(echo, client):
    with UdpProxy(("127.0.0.1", echo.port)) as proxy:
        send_numbered(client, proxy.port, 200)
        answers = drain(client)
    assert indices(answers) == list(range(200))
    stats = proxy.stats()
    assert stats[UP].received == stats[UP].forwarded == 200
    assert stats[DOWN].forwarded == 200 and stats[UP].lost == 0


def test_thirty_percent_loss_drops_about_that_many_and_the_same_ones_for_the_same_seed(echo, client):
    dropped_runs = []
    for _ in range(2):
        echo.received.clear()
        with UdpProxy(("127.0.0.1", echo.port), seed=42) as proxy:
            proxy.impair(up=Impairment(loss=0.3), down=CLEAN)
            send_numbered(client, proxy.port, 500, pause=0.0005)
            drain(client)
            wait_until(lambda: proxy.stats()[UP].received == 500)
        arrived = set(indices(d for _, d in echo.received))
        dropped_runs.append(set(range(500)) - arrived)
        assert proxy.stats()[UP].lost == len(dropped_runs[-1])
    assert 0.24 < len(dropped_runs[0]) / 500 < 0.36
    assert dropped_runs[0] == dropped_runs[1]  # deterministic with the seed


def test_another_seed_drops_other_datagrams(echo, client):
    fates = []
    for seed in (1, 2):
        rng = random.Random(f"{seed}/{UP}")
        fates.append([decide(Impairment(loss=0.3), rng).dropped for _ in range(300)])
    assert fates[0] != fates[1]


def test_delay_and_jitter_hold_each_datagram_within_the_stated_window(echo, client):
    with UdpProxy(("127.0.0.1", echo.port), seed=3) as proxy:
        proxy.impair(up=Impairment(delay_s=0.3, jitter_s=0.2), down=CLEAN)
        sent = send_numbered(client, proxy.port, 60, pause=0.005)
        wait_until(lambda: len(echo.received) == 60)
    latencies = [at - sent[int(data)] for at, data in echo.received]
    assert min(latencies) >= 0.09 and max(latencies) <= 0.55
    assert max(latencies) - min(latencies) > 0.2  # there is jitter, not a fixed delay
    order = [int(data) for _, data in echo.received]
    assert order != sorted(order)  # jitter reorders, as on a real link


def test_duplication_sends_copies_and_counts_them(echo, client):
    with UdpProxy(("127.0.0.1", echo.port), seed=5) as proxy:
        proxy.impair(up=Impairment(duplicate=0.5), down=CLEAN)
        send_numbered(client, proxy.port, 100)
        wait_until(lambda: proxy.stats()[UP].forwarded >= 100 + proxy.stats()[UP].duplicated)
        time.sleep(0.1)
    got = [int(d) for _, d in echo.received]
    assert len(got) == 100 + proxy.stats()[UP].duplicated
    assert 30 < proxy.stats()[UP].duplicated < 70 and set(got) == set(range(100))


def test_reordering_lets_later_datagrams_overtake(echo, client):
    with UdpProxy(("127.0.0.1", echo.port), seed=9) as proxy:
        proxy.impair(up=Impairment(reorder=0.2, reorder_s=0.15), down=CLEAN)
        send_numbered(client, proxy.port, 100, pause=0.002)
        wait_until(lambda: len(echo.received) == 100)
    order = [int(d) for _, d in echo.received]
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert proxy.stats()[UP].reordered > 5


def test_a_partition_drops_everything_for_its_duration_then_the_link_works_again(echo, client):
    with UdpProxy(("127.0.0.1", echo.port)) as proxy:
        proxy.partition(for_s=0.6)
        send_numbered(client, proxy.port, 20)
        assert drain(client, quiet_s=0.2, limit_s=0.4) == []
        while proxy.partitioned(UP):
            time.sleep(0.02)
        send_numbered(client, proxy.port, 5)
        answers = drain(client)
    assert indices(answers) == list(range(5))
    assert proxy.stats()[UP].partitioned == 20
    assert [e.kind for e in proxy.events()] == ["partition"]


def test_losing_only_the_answers_still_delivers_the_requests(echo, client):
    with UdpProxy(("127.0.0.1", echo.port)) as proxy:
        proxy.partition(direction=DOWN)
        send_numbered(client, proxy.port, 10)
        assert drain(client, quiet_s=0.3) == []
        wait_until(lambda: len(echo.received) == 10)
        proxy.heal()
        send_numbered(client, proxy.port, 3)
        assert indices(drain(client)) == [0, 1, 2]


def test_each_client_has_its_own_upstream_and_gets_its_own_answers(echo):
    socks = []
    try:
        with UdpProxy(("127.0.0.1", echo.port)) as proxy:
            for name in (b"A", b"B"):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", 0))
                sock.settimeout(0.05)
                socks.append(sock)
                for index in range(5):
                    sock.sendto(name + b"%05d" % index, ("127.0.0.1", proxy.port))
            answers = [drain(sock) for sock in socks]
        assert answers[0] == [b"re:A%05d" % i for i in range(5)]
        assert answers[1] == [b"re:B%05d" % i for i in range(5)]
        assert len(echo.peers) == 2  # a client restarted after a power cut is a new upstream
    finally:
        for sock in socks:
            sock.close()


def test_impair_changes_only_the_named_fields_and_heal_restores_a_clean_link(echo):
    with UdpProxy(("127.0.0.1", echo.port)) as proxy:
        proxy.impair(loss=0.3)
        proxy.impair(jitter_s=0.5)
        assert proxy.impairment(UP) == proxy.impairment(DOWN) == Impairment(loss=0.3, jitter_s=0.5)
        proxy.heal()
        assert proxy.impairment(UP).clean and not proxy.partitioned(UP)
        assert [e.kind for e in proxy.events()] == ["impair", "impair", "heal"]
        assert "loss 30%" in proxy.events()[1].detail and "± 500 ms" in proxy.events()[1].detail


@pytest.mark.parametrize("settings, word", [
    ({"loss": 1.5}, "loss"), ({"loss": -0.1}, "loss"), ({"jitter_s": -1}, "jitter_s"),
    ({"duplicate": True}, "duplicate"), ({"delay_s": 1e9}, "delay_s"),
])
def test_an_impossible_impairment_is_refused_naming_the_setting(settings, word):
    with pytest.raises(ImpairmentError, match=word):
        Impairment(**settings)


def test_an_unknown_setting_or_direction_is_refused(echo):
    with UdpProxy(("127.0.0.1", echo.port)) as proxy:
        with pytest.raises(ImpairmentError, match="unknown"):
            proxy.impair(los=0.3)
        with pytest.raises(ImpairmentError, match="direction"):
            proxy.partition(direction="sideways")


@given(st.integers(0, 2**32), st.floats(0, 1), st.floats(0, 2), st.floats(0, 2), st.floats(0, 1), st.floats(0, 1))
def test_every_fate_respects_its_impairment_and_draws_the_same_stream(seed, loss, delay, jitter, dup, reorder):
    impairment = Impairment(loss=loss, delay_s=delay, jitter_s=jitter, duplicate=dup, reorder=reorder)
    rng, twin = random.Random(seed), random.Random(seed)
    for _ in range(20):
        fate = decide(impairment, rng)
        decide(CLEAN, twin)
        assert rng.getstate() == twin.getstate()  # four draws whatever the settings
        if not fate.dropped:
            assert 1 <= len(fate.delays) <= 2
            for d in fate.delays:
                assert 0.0 <= d <= delay + jitter + (impairment.reorder_s if fate.reordered else 0.0) + 1e-9


def test_the_proxy_runs_from_the_command_line_and_relays(echo, client):
    proc = subprocess.Popen([sys.executable, "-m", "hil.netem", "--target", f"127.0.0.1:{echo.port}",
                             "--listen", "127.0.0.1:0", "--seed", "1"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("netem: 127.0.0.1:") and "clean" in line
        port = int(line.split()[1].split(":")[1])
        send_numbered(client, port, 3)
        assert indices(drain(client)) == [0, 1, 2]
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
