# no_new_privs: set with prctl before the checkpoint; checked on SIGUSR2.
import ctypes, signal, sys, time
libc = ctypes.CDLL(None)
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
flag = []
signal.signal(signal.SIGUSR2, lambda *a: flag.append(1))
print("READY", flush=True)
while not flag:
    time.sleep(0.01)
v = libc.prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS
print("PASS" if v == 1 else "FAIL: no_new_privs is %d after restart" % v, flush=True)
