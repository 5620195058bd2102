"""Random bytes, storms and crashes against a real server.

Each test is seeded; a failure prints the seed (``CHATNET_ABUSE_SEED``
replays it).
"""

import os
import random
import signal
import socket
import sqlite3
import threading
import time

from live_server import LiveServer, RawClient, frame, open_descriptors

SEED = int(os.environ.get("CHATNET_ABUSE_SEED", "424242"))






def random_garbage(rng):
    """Bytes a broken or hostile client might send: frames, lines, noise, in any mix."""
    pieces = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.2:
            pieces.append(frame(rng.choice([b"alice", b"carol", b"nobody", b"a b"]),
                                rng.choice([b"pw", b"bad", b""])))
        elif kind < 0.4:
            pieces.append(b"chatwith/" + rng.choice([b"alice", b"bob", b"x" * 50, b""]) + b"\n")
        elif kind < 0.6:
            pieces.append(b"chat/" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 60))) + b"\n")
        elif kind < 0.7:
            pieces.append(b"y" * rng.choice([4095, 4096, 5000, 70000]) + b"\n")
        elif kind < 0.8:
            pieces.append(b"\r\n" * rng.randint(1, 5) + b"\0" * rng.randint(0, 20))
        else:
            pieces.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))
    return b"".join(pieces)


def test_random_bytes_from_many_connections_leave_a_working_server(start_server):
    rng = random.Random(SEED)
    server = start_server("--login-timeout", "2")
    sockets = []
    try:
        for _ in range(60):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            data = random_garbage(rng)
            for start in range(0, len(data), rng.randint(1, 4096)):
                try:
                    sock.sendall(data[start:start + 4096])
                except OSError:
                    break
            if rng.random() < 0.3:
                sock.close()
            else:
                sockets.append(sock)
        assert server.alive(), "seed %d" % SEED
        alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
        alice.chatwith(b"bob", b"2")
        alice.send("chat/still working 잘 돼요\n".encode())
        bob.expect("chat/alice: still working 잘 돼요".encode())
    finally:
        for sock in sockets:
            sock.close()
    assert server.problems() == [], "seed %d: %r" % (SEED, server.problems())


def test_a_storm_of_clients_vanishing_mid_frame_or_mid_line(start_server):
    rng = random.Random(SEED + 1)
    server = start_server()
    alice, bob = server.login(b"alice", b"pw"), server.login(b"bob", b"secret")
    alice.chatwith(b"bob", b"2")
    baseline = open_descriptors(server.proc.pid)
    for wave in range(4):
        clients = []
        for _ in range(100):
            client = RawClient(server.port)
            login = frame(rng.choice([b"carol", b"dave", b"erin"]), b"pw")
            cut = rng.random()
            if cut < 0.3:
                client.send(login[:rng.randint(1, 15)])                    # mid-frame
            elif cut < 0.6:
                client.send(login + b"chatwith/bo")                        # mid-line
            else:
                client.send(login + b"chatwith/alice\nchat/half a messa")  # mid-message
            clients.append(client)
        for client in clients:
            if rng.random() < 0.5:
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            client.close()                                                 # FIN or RST
        started = time.perf_counter()
        alice.send(b"chat/wave %d\n" % wave)
        bob.wait_for_line(b"chat/alice: wave %d" % wave)
        assert time.perf_counter() - started < 2.0, "slow during wave %d (seed %d)" % (wave, SEED)
    deadline = time.monotonic() + 10
    while open_descriptors(server.proc.pid) > baseline + 2:
        assert time.monotonic() < deadline, "descriptors leaked: %d > %d" % (
            open_descriptors(server.proc.pid), baseline)
        time.sleep(0.05)
    assert server.problems() == []


def test_kill_9_at_random_moments_loses_no_acknowledged_message(database):
    rng = random.Random(SEED + 2)
    acknowledged = {b"alice": [], b"carol": []}
    counters = {b"alice": 0, b"carol": 0}
    for round_number in range(4):
        server = LiveServer(database, "--store-limit", "1000000").start()
        stop = threading.Event()

        def send_forever(user_id):
            try:
                client = server.login(user_id, b"pw")
                client.chatwith(b"bob", b"1")
                while not stop.is_set():
                    batch = []
                    for _ in range(rng.randint(1, 20)):
                        counters[user_id] += 1
                        batch.append(b"%s %d" % (user_id, counters[user_id]))
                    client.send(b"".join(b"chat/" + text + b"\n" for text in batch))
                    if client.sync() != []:
                        return
                    acknowledged[user_id].extend(batch)     # a later line was answered
            except (AssertionError, OSError):
                return

        threads = [threading.Thread(target=send_forever, args=(user,), daemon=True)
                   for user in acknowledged]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.2, 0.8))
        server.stop(signal.SIGKILL)
        stop.set()
        for thread in threads:
            thread.join(10)
    with sqlite3.connect(database) as connection:
        stored = [text.encode() for (text,) in connection.execute(
            "SELECT text FROM stored_messages WHERE recipient = 'bob' ORDER BY id")]
    for user_id, texts in acknowledged.items():
        mine = [text for text in stored if text.split(b" ")[0] == user_id]
        assert len(mine) == len(set(mine)), "a message stored twice (seed %d)" % SEED
        position = 0
        for text in texts:                     # every acknowledged one, in order
            assert text in mine[position:], "%r lost (seed %d)" % (text, SEED)
            position = mine.index(text, position) + 1
    print("\nkill -9 x4: %d acknowledged messages, all stored in order, none twice"
          % sum(len(texts) for texts in acknowledged.values()))
    server = LiveServer(database, "--store-limit", "1000000").start()
    try:
        bob = server.login(b"bob", b"secret")
        received = bob.lines(len(stored))
        assert received == [b"chat/" + text.split(b" ")[0] + b": " + text for text in stored]
    finally:
        assert server.stop() == 0
