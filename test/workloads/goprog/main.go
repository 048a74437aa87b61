// Command goprog is a test workload: a multi-threaded Go program with
// goroutines, channels, a ticker (the runtime's timers and netpoller: epoll
// and eventfd) and a map, checkpointed and restarted by the e2e harness. On
// SIGUSR2 it checks that everything still holds and moves, and prints PASS
// or FAIL.
package main

import (
	"fmt"
	"math/rand"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

const seed = 42

func buildMap() map[int]uint64 {
	r := rand.New(rand.NewSource(seed))
	m := make(map[int]uint64, 10000)
	for i := 0; i < 10000; i++ {
		m[i] = r.Uint64()
	}
	return m
}

func main() {
	runtime.GOMAXPROCS(2)
	m := buildMap()
	var ticks, sent, summed, sum atomic.Uint64
	ch := make(chan uint64, 16)
	go func() { // producer
		for i := uint64(1); ; i++ {
			ch <- i
			sent.Store(i)
		}
	}()
	go func() { // consumer
		for v := range ch {
			sum.Add(v)
			summed.Add(1)
			if v%1000 == 0 {
				time.Sleep(time.Millisecond) // park on a timer now and then
			}
		}
	}()
	go func() {
		t := time.NewTicker(5 * time.Millisecond)
		for range t.C {
			ticks.Add(1)
		}
	}()
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	fmt.Println("READY")
	<-usr2

	fail := func(format string, args ...any) {
		fmt.Printf("FAIL: "+format+"\n", args...)
		os.Exit(1)
	}
	want := buildMap()
	if len(m) != len(want) {
		fail("map has %d entries, want %d", len(m), len(want))
	}
	for k, v := range want {
		if m[k] != v {
			fail("map[%d] = %#x, want %#x", k, m[k], v)
		}
	}
	t0, s0 := ticks.Load(), summed.Load()
	time.Sleep(100 * time.Millisecond)
	t1, s1 := ticks.Load(), summed.Load()
	if t1-t0 < 5 {
		fail("ticker fired %d times in 100 ms, want about 20", t1-t0)
	}
	if s1 == s0 {
		fail("channel pipeline stalled at %d values", s1)
	}
	// The consumer has summed 1..n for some n it has seen. The producer
	// records a value as sent only after the send, so the consumer can be
	// one value ahead of that record.
	n, total := summed.Load(), sum.Load()
	if total < n*(n+1)/2-n*16 || sent.Load()+1 < n {
		fail("pipeline sum %d for %d values (sent %d)", total, n, sent.Load())
	}
	fmt.Printf("ticks %d, values %d, threads %d\nPASS\n", t1, n, runtime.NumGoroutine())
}
