// build: none (run as: java Counter.java)
/*
 * Counter.java - a JVM across a checkpoint: JIT-compiled code, the
 * garbage collector's threads and heap, thread pools, parked threads.
 *
 * Protocol: prints READY once set up, then waits for SIGUSR2; then prints
 * PASS (exit 0) or "FAIL: ..." (exit 1) as its last line.
 *
 * Set up: four pool threads count, parking 1 ms between steps; a map of
 * 200000 entries derived from a seed; a warm-up that makes the JIT compile
 * the check.
 * After the checkpoint: every counter still moves, the map checks against
 * values computed again from the seed, and 200 MiB allocated in a loop
 * through a 64 MiB heap (run with -Xmx64m) are collected (the GC runs).
 */
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLongArray;
import java.util.concurrent.locks.LockSupport;

public class Counter {
    static final long SEED = 20261128L;

    static long value(long i) {
        long x = i * 0x9E3779B97F4A7C15L + SEED;
        x ^= x >>> 31;
        return x * 0xBF58476D1CE4E5B9L;
    }

    static String check(Map<Long, Long> m) {
        if (m.size() != 200000) return "map has " + m.size() + " entries";
        for (long i = 0; i < 200000; i++)
            if (m.get(i) != value(i)) return "map entry " + i + " differs";
        return null;
    }

    public static void main(String[] args) throws Exception {
        AtomicLongArray counts = new AtomicLongArray(4);
        ExecutorService pool = Executors.newFixedThreadPool(4);
        for (int t = 0; t < 4; t++) {
            final int k = t;
            pool.submit(() -> {
                while (true) {
                    counts.incrementAndGet(k);
                    LockSupport.parkNanos(1_000_000);
                }
            });
        }
        Map<Long, Long> m = new HashMap<>();
        for (long i = 0; i < 200000; i++) m.put(i, value(i));
        for (int i = 0; i < 20; i++) check(m); // warm-up: the JIT compiles check

        CountDownLatch usr2 = new CountDownLatch(1);
        sun.misc.Signal.handle(new sun.misc.Signal("USR2"), s -> usr2.countDown());
        System.out.println("READY");
        System.out.flush();
        usr2.await();

        StringBuilder fails = new StringBuilder();
        long[] before = new long[4];
        for (int t = 0; t < 4; t++) before[t] = counts.get(t);
        Thread.sleep(300);
        for (int t = 0; t < 4; t++)
            if (counts.get(t) - before[t] < 5)
                fails.append("; counter ").append(t).append(" moved ").append(counts.get(t) - before[t]).append(" in 300 ms");
        String bad = check(m);
        if (bad != null) fails.append("; ").append(bad);
        long sum = 0; // 200 MiB through a heap of 64 MiB (-Xmx64m): the GC must run
        for (int i = 0; i < 200; i++) {
            byte[] b = new byte[1 << 20];
            b[b.length - 1] = 1;
            sum += b.length - 1 + b[b.length - 1];
        }
        if (sum != 200L << 20) fails.append("; allocated ").append(sum).append(" bytes");
        System.out.println(fails.length() == 0 ? "PASS" : "FAIL: " + fails.substring(2));
        System.out.flush();
        System.exit(fails.length() == 0 ? 0 : 1);
    }
}
