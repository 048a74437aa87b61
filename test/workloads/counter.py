# build: none (run as: python3 counter.py)
"""counter.py - interpreter state of a single-threaded CPython process across a checkpoint.

Protocol: prints READY once set up, then loops (counter += 1, a little work,
time.sleep(0.01)) until SIGUSR2; then prints PASS (exit 0) or "FAIL: ..."
(exit 1) as its last line.  All differences are listed, the first one first.

State: a dict of 10000 entries derived from a seed (random.Random), a list,
a partially consumed generator, a running counter and a running checksum of
the loop's work.  Everything is verified against values recomputed from the
seed, never against the live objects themselves.

Set WL_TAMPER=1 in the environment to see the FAIL path (the dict is
modified after READY).
"""
import os
import random
import signal
import sys
import time

SEED = 20240611
N = 10000

got_usr2 = False


def on_usr2(signum, frame):
    global got_usr2
    got_usr2 = True


def make_dict(seed):
    r = random.Random(seed)
    return {"k%05d" % i: (r.getrandbits(48), r.random()) for i in range(N)}


def make_list(seed):
    r = random.Random(seed ^ 0xABCDEF)
    return [r.randrange(1 << 30) for _ in range(1000)]


def collatz_gen(start):
    """Yields (step, value) along the Collatz sequences of start, start+1, ..."""
    step = 0
    n = start
    while True:
        x = n
        while x != 1:
            yield step, x
            step += 1
            x = x // 2 if x % 2 == 0 else 3 * x + 1
        n += 1


def gen_expected(start, k):
    """The k-th value (0-based) of collatz_gen(start), recomputed independently."""
    g = collatz_gen(start)
    for _ in range(k):
        next(g)
    return next(g)


def work_step(i):
    # a little deterministic work whose result is checked at the end
    return (i * 2654435761 + sum(range(i % 50))) & 0xFFFFFFFF


def main():
    signal.signal(signal.SIGUSR2, on_usr2)

    d = make_dict(SEED)
    lst = make_list(SEED)
    lst.sort()
    gen = collatz_gen(27)
    consumed = 0
    for _ in range(500):  # partially consume
        next(gen)
        consumed += 1
    t_start = time.monotonic()

    print("counter: dict %d entries, list %d, generator at %d, pid %d"
          % (len(d), len(lst), consumed, os.getpid()), flush=True)
    print("READY", flush=True)

    if os.environ.get("WL_TAMPER"):
        d["k00042"] = (0, 0.0)

    counter = 0
    checksum = 0
    while not got_usr2:
        counter += 1
        checksum = (checksum + work_step(counter)) & 0xFFFFFFFF
        lst[counter % len(lst)] += 0  # touch the list
        time.sleep(0.01)

    # --- verification ---
    fails = []
    exp = make_dict(SEED)
    if len(d) != len(exp):
        fails.append("dict size expected %d actual %d" % (len(exp), len(d)))
    if d != exp:
        for k in sorted(exp):
            if d.get(k) != exp[k]:
                fails.append("dict[%r] expected %r actual %r" % (k, exp[k], d.get(k)))
                break
        else:
            extra = sorted(set(d) - set(exp))
            fails.append("dict has unexpected keys %r" % extra[:5])
    # the dict must still work as a hash table (lookups, insert, delete)
    d["new"] = 1
    del d["new"]
    if "k09999" not in d or "nope" in d:
        fails.append("dict membership broken")

    explist = sorted(make_list(SEED))
    if lst != explist:
        idx = next((i for i in range(min(len(lst), len(explist))) if lst[i] != explist[i]), None)
        fails.append("list differs at %r: expected %r actual %r" % (
            idx, explist[idx] if idx is not None else None,
            lst[idx] if idx is not None else len(lst)))

    want = gen_expected(27, consumed)
    got = next(gen)
    if got != want:
        fails.append("generator next expected %r actual %r" % (want, got))
    want2 = gen_expected(27, consumed + 1)
    got2 = next(gen)
    if got2 != want2:
        fails.append("generator next+1 expected %r actual %r" % (want2, got2))

    if counter <= 0:
        fails.append("counter expected > 0 actual %d" % counter)
    expsum = 0
    for i in range(1, counter + 1):
        expsum = (expsum + work_step(i)) & 0xFFFFFFFF
    if checksum != expsum:
        fails.append("checksum over %d steps expected %#x actual %#x" % (counter, expsum, checksum))

    m1 = time.monotonic()
    time.sleep(0.02)
    m2 = time.monotonic()
    if not (m1 >= t_start and 0.015 <= m2 - m1 < 2.0):
        fails.append("time.monotonic: start %.6f, then %.6f, %.6f (sleep 0.02 measured %.6f)"
                     % (t_start, m1, m2, m2 - m1))

    if os.getpid() != int(open("/proc/self/stat").read().split()[0]):
        fails.append("os.getpid() %d != /proc/self/stat pid" % os.getpid())

    if fails:
        print("FAIL: " + "; ".join(fails), flush=True)
        sys.exit(1)
    print("counter: %d iterations" % counter, flush=True)
    print("PASS", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
