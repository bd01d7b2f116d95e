#!/usr/bin/python3
"""pymemcache (Debian's python3-pymemcache) against phalanx's session store.

Usage: pymemcache_check.py ADDR [ADDR...] --seconds S [--cafile CA]

With --cafile, every client speaks TLS and checks the node's certificate (and the address it
dialled) against the cluster CA CA ([sessions] tls = true), and a plain client must be refused.

1. Every command a web app uses, through the first address, with the answers a memcached gives.
2. PHP's session-lock sequence (add lock.<sid> -> get -> set -> delete), two clients on two
   different nodes racing for each lock, for S seconds (the test kills the store's leader
   meanwhile): never do both win one `add`; every session written and acknowledged reads back.
Prints one JSON line: {"rounds", "both_won", "won", "errors", "lost"}; exits 1 on a failure.
"""
import json
import ssl
import sys
import threading
import time

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError


def addr(a):
    host, port = a.rsplit(":", 1)
    return (host, int(port))


TLS = None  # an ssl.SSLContext with --cafile


def client(a):
    return Client(addr(a), connect_timeout=2, timeout=10, tls_context=TLS)


def commands(a):
    c = client(a)
    assert c.set("py.k", b"v1") is True
    assert c.get("py.k") == b"v1"
    assert c.add("py.k", b"x", noreply=False) is False
    assert c.replace("py.k", b"v2", noreply=False) is True
    assert c.append("py.k", b"+", noreply=False) is True
    assert c.prepend("py.k", b"<", noreply=False) is True
    assert c.get("py.k") == b"<v2+"
    value, cas = c.gets("py.k")
    assert value == b"<v2+"
    assert c.cas("py.k", b"v3", cas, noreply=False) is True
    assert c.cas("py.k", b"v4", cas, noreply=False) is False  # EXISTS: the unique moved on
    assert c.set("py.n", b"10") is True
    assert c.incr("py.n", 5) == 15
    assert c.decr("py.n", 20) == 0
    assert c.touch("py.n", 100, noreply=False) is True
    assert c.get_many(["py.k", "py.n", "py.none"]) == {"py.k": b"v3", "py.n": b"0 "}
    assert c.delete("py.k", noreply=False) is True
    assert c.delete("py.k", noreply=False) is False
    assert c.get("py.k") is None
    c.set("py.q", b"quiet")  # noreply by default in pymemcache
    assert c.get("py.q") == b"quiet", "a read after a noreply write sees it"
    assert c.version()
    c.close()


def race(addrs, seconds):
    """Two clients on two nodes race for `add lock.<round>`; the winner does PHP's sequence."""
    stats = {"rounds": 0, "both_won": 0, "won": 0, "errors": 0, "lost": []}
    acked = {}
    clients = [client(addrs[0]), client(addrs[1 % len(addrs)])]
    until = time.time() + seconds
    rnd = 0
    while time.time() < until:
        rnd += 1
        results = [None, None]
        barrier = threading.Barrier(2)

        def attempt(i):
            barrier.wait()
            try:
                results[i] = clients[i].add("lock.s%d" % rnd, b"1", expire=30, noreply=False)
            except (MemcacheError, OSError) as e:
                results[i] = e

        ts = [threading.Thread(target=attempt, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stats["rounds"] += 1
        wins = [i for i in range(2) if results[i] is True]
        if len(wins) == 2:
            stats["both_won"] += 1
        for i in range(2):
            if isinstance(results[i], Exception):
                stats["errors"] += 1
                try:
                    clients[i].close()
                except Exception:
                    pass
                clients[i] = client(addrs[i % len(addrs)])
        if len(wins) == 1:
            w = clients[wins[0]]
            stats["won"] += 1
            try:
                w.get("sess.s%d" % rnd)
                if w.set("sess.s%d" % rnd, b"cart-%d" % rnd, noreply=False):
                    acked["sess.s%d" % rnd] = b"cart-%d" % rnd
                w.delete("lock.s%d" % rnd, noreply=False)
            except (MemcacheError, OSError):
                stats["errors"] += 1
                clients[wins[0]] = client(addrs[wins[0] % len(addrs)])
    # Every acknowledged session reads back, through every node.
    for a in addrs:
        c = client(a)
        for k, v in acked.items():
            for attempt in range(50):
                try:
                    got = c.get(k)
                    break
                except (MemcacheError, OSError):
                    time.sleep(0.1)
                    c = client(a)
            if got != v:
                stats["lost"].append((a, k))
    return stats


def main():
    global TLS
    args = sys.argv[1:]
    seconds = float(args[args.index("--seconds") + 1]) if "--seconds" in args else 5
    addrs = [a for a in args if ":" in a]
    if "--cafile" in args:
        TLS = ssl.create_default_context(cafile=args[args.index("--cafile") + 1])
        TLS.minimum_version = ssl.TLSVersion.TLSv1_3
        plain = Client(addr(addrs[0]), connect_timeout=2, timeout=2)
        try:
            plain.set("py.plain", b"x", noreply=False)
            sys.exit("a plain client was served by a TLS port")
        except (MemcacheError, OSError):
            pass
    commands(addrs[0])
    stats = race(addrs, seconds)
    print(json.dumps(stats))
    sys.exit(0 if stats["both_won"] == 0 and not stats["lost"] and stats["won"] > 0 else 1)


if __name__ == "__main__":
    main()
