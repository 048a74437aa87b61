# build: none (run as: python3 pool.py)
"""pool.py - Python multiprocessing across a checkpoint: a pool of worker
processes, and a lock, a shared value and a queue between processes.

Protocol: prints READY once set up, then waits for SIGUSR2; then prints PASS
(exit 0) or "FAIL: ..." (exit 1) as its last line.

multiprocessing's locks are POSIX semaphores (a file in /dev/shm, unlinked
at once and mapped shared), its shared values live in an arena (a temporary
file, unlinked, mapped shared; opened with O_NOFOLLOW), its pool and queue
talk through pipes and a feeder thread.

After the checkpoint: the pool maps a function over 100 numbers, a worker
process increments the shared value under the lock 100 times while the main
process does too, and a queue carries an object from a worker back.
"""
import multiprocessing as mp
import signal
import sys


def square(x):
    return x * x


def bump(lock, value, n):
    for _ in range(n):
        with lock:
            value.value += 1


def send(q):
    q.put({"from": "worker", "n": 42})


def main():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    fails = []
    with mp.Pool(3) as pool:
        lock, value, q = mp.Lock(), mp.Value("i", 0), mp.Queue()
        if sum(pool.map(square, range(50))) != sum(i * i for i in range(50)):
            fails.append("the pool's first map is wrong")
        print("READY", flush=True)
        signal.sigwait({signal.SIGUSR2})

        if sum(pool.map(square, range(100))) != sum(i * i for i in range(100)):
            fails.append("the pool's map after the restart is wrong")
        p = mp.Process(target=bump, args=(lock, value, 100))
        p.start()
        bump(lock, value, 100)
        p.join(10)
        if p.exitcode != 0 or value.value != 200:
            fails.append(f"shared value {value.value} (worker exit {p.exitcode}), want 200")
        s = mp.Process(target=send, args=(q,))
        s.start()
        got = q.get(timeout=10)
        s.join(10)
        if got != {"from": "worker", "n": 42}:
            fails.append(f"the queue carried {got!r}")
    print("FAIL: " + "; ".join(fails) if fails else "PASS", flush=True)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
