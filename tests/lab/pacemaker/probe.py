#!/usr/bin/python3
"""HTTP availability probe for the pcmk-lab (run inside netns pkc).

Starts one independent GET http://HOST:PORT/ every INTERVAL seconds (non-blocking,
so a hanging connect does not reduce resolution), each with its own timeout.
Stops after MAX seconds, or once the service has been healthy for SETTLE seconds
after an outage that started after the optional mark file appeared.
Prints one JSON line: outage = first failed attempt -> first successful attempt
after it (by attempt start time), plus kill->recovery if a mark file with an
epoch timestamp (the kill time) is given.
"""
import asyncio, json, os, sys, time, argparse

ap = argparse.ArgumentParser()
ap.add_argument("--host", default="10.88.0.50")
ap.add_argument("--port", type=int, default=8080)
ap.add_argument("--interval", type=float, default=0.010)
ap.add_argument("--timeout", type=float, default=0.5)
ap.add_argument("--max", type=float, default=90.0)
ap.add_argument("--settle", type=float, default=2.0)
ap.add_argument("--mark", default="", help="file holding the kill epoch time (written by the driver)")
ap.add_argument("--ready", default="", help="touch this file once the first success is seen")
a = ap.parse_args()

results = []  # (start, ok, err)

async def attempt(t0):
    ok, err = False, ""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(a.host, a.port), a.timeout)
        try:
            w.write(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
            line = await asyncio.wait_for(r.readline(), a.timeout)
            ok = line.startswith(b"HTTP/1.") and b" 200 " in line
            if not ok:
                err = line[:40].decode(errors="replace")
        finally:
            w.close()
    except asyncio.TimeoutError:
        err = "timeout"
    except OSError as e:
        err = type(e).__name__
    results.append((t0, ok, err))

async def main():
    start = time.time()
    tasks = set()
    ready_done = False
    while True:
        now = time.time()
        t = asyncio.ensure_future(attempt(now))
        tasks.add(t); t.add_done_callback(tasks.discard)
        await asyncio.sleep(a.interval)
        if a.ready and not ready_done and any(ok for _, ok, _ in results):
            open(a.ready, "w").close(); ready_done = True
        if now - start > a.max:
            break
        # stop once: an outage was seen, and the last SETTLE s of completed attempts all succeeded
        done = sorted(results)
        fails = [r for r in done if not r[1]]
        if fails:
            last_fail = fails[-1][0]
            recent = [r for r in done if r[0] > last_fail]
            if recent and recent[-1][0] - recent[0][0] >= a.settle:
                break
    if tasks:
        await asyncio.wait(tasks, timeout=a.timeout + 0.5)

asyncio.run(main())
res = sorted(results)
out = {"attempts": len(res), "failed": sum(1 for r in res if not r[1])}
kill = None
if a.mark and os.path.exists(a.mark):
    try:
        kill = float(open(a.mark).read().strip())
    except ValueError:
        pass
first_fail = next((r for r in res if not r[1] and (kill is None or r[0] >= kill - 0.5)), None)
if first_fail:
    rec = next((r for r in res if r[0] > first_fail[0] and r[1]), None)
    # last failure before recovery
    last_fail = max((r[0] for r in res if not r[1] and (rec is None or r[0] < rec[0])), default=None)
    errs = {}
    for r in res:
        if not r[1] and r[0] >= first_fail[0] and (rec is None or r[0] < rec[0]):
            errs[r[2]] = errs.get(r[2], 0) + 1
    out.update({
        "first_fail_err": first_fail[2],
        "outage_ms": round((rec[0] - first_fail[0]) * 1000) if rec else None,
        "errors": errs,
    })
    if kill is not None:
        out["kill_to_first_fail_ms"] = round((first_fail[0] - kill) * 1000)
        out["kill_to_recovery_ms"] = round((rec[0] - kill) * 1000) if rec else None
else:
    out["outage_ms"] = 0
print(json.dumps(out))
