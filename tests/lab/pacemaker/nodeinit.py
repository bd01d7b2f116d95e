#!/usr/bin/python3
"""Per-node 'init' for the pcmk-lab: become a child subreaper, run the node
script, and reap every orphan immediately.  Without this, orphaned daemons
(e.g. the http server started by ocf:heartbeat:anything via su/nohup) are
reparented to the machine's PID 1, which here (not systemd) reaps zombies
only every ~1-2 s; a SIGKILLed server then stays a zombie, `kill -0` still
succeeds and the RA's monitor reports it running for up to ~2 s."""
import ctypes, os, sys
PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.stderr.write("nodeinit: prctl(PR_SET_CHILD_SUBREAPER) failed\n")
main = os.fork()
if main == 0:
    os.execv(sys.argv[1], sys.argv[1:])
rc = 0
while True:
    try:
        pid, st = os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        continue
    if pid == main:
        rc = os.waitstatus_to_exitcode(st)
sys.exit(rc if rc >= 0 else 1)
