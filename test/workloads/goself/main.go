// Command goself is a test workload: a multi-threaded Go program that
// checkpoints itself with package self, like test/workloads/self.c. It
// counts iterations 0..7 and calls self.Checkpoint at iteration 2 (image
// IMG) and, when IMG4 is given, again at 4, while a goroutine keeps
// summing numbers from a channel. Restarted from an image, the call
// reports the restart and it counts on from there. It checks its own state
// and prints PASS or FAIL.
//
//	goself [-w] [-f] IMG [IMG4]
//	-w  wait for SIGUSR2 before the verdict
//	-f  the checkpoint at 2 must fail (unwritable IMG); it carries on
package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ckpt/ckpt/self"
)

const n = 8

func main() {
	runtime.GOMAXPROCS(2)
	wait, fail := false, false
	args := os.Args[1:]
	for len(args) > 0 && len(args[0]) > 0 && args[0][0] == '-' {
		wait = wait || args[0] == "-w"
		fail = fail || args[0] == "-f"
		args = args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: goself [-w] [-f] IMG [IMG4]")
		os.Exit(2)
	}
	img := map[int]string{2: args[0]}
	if len(args) > 1 {
		img[4] = args[1]
	}
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)

	// A goroutine on other threads that must keep its state across
	// the checkpoint and keep moving after it.
	var summed, sum atomic.Uint64
	ch := make(chan uint64)
	go func() {
		for v := range ch {
			sum.Add(v)
			summed.Store(v)
		}
	}()
	feed := make(chan struct{})
	go func() {
		for i := uint64(1); ; i++ {
			select {
			case ch <- i:
			case <-feed:
				close(ch)
				return
			}
		}
	}()

	pid := os.Getpid()
	ids := map[int]int64{}
	bad, restarts, count := false, 0, 0
	failf := func(format string, a ...any) {
		fmt.Printf("FAIL: "+format+"\n", a...)
		bad = true
	}
	fmt.Println("READY")
	for i := 0; i < n; i++ {
		fmt.Printf("iteration %d\n", i)
		if path, ok := img[i]; ok {
			before := summed.Load()
			res, err := self.Checkpoint(path)
			switch {
			case err != nil:
				fmt.Printf("checkpoint at %d failed: %v\n", i, err)
				if !fail || i != 2 {
					failf("unexpected checkpoint failure")
				}
			case res.Restarted:
				restarts++
				fmt.Printf("restarted at %d\n", i)
				if os.Getpid() != pid {
					failf("pid %d after restart, was %d", os.Getpid(), pid)
				}
			default:
				ids[i] = res.ID
				fmt.Printf("checkpoint at %d: id %d\n", i, res.ID)
			}
			if fail && i == 2 && err == nil {
				failf("the checkpoint to %s should have failed", path)
			}
			if summed.Load() < before {
				failf("the summing goroutine went back from %d to %d", before, summed.Load())
			}
		}
		count++
		if count != i+1 {
			failf("count %d at iteration %d", count, i)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ids[2] != 0 && ids[2] == ids[4] {
		failf("two checkpoints share id %d", ids[2])
	}
	// The goroutines still run: the sum moves and matches its numbers.
	last := summed.Load()
	deadline := time.Now().Add(5 * time.Second)
	for summed.Load() == last && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(feed)
	for v := summed.Load(); ; v = summed.Load() {
		if s := sum.Load(); s == v*(v+1)/2 {
			break
		} else if time.Now().After(deadline) {
			failf("sum %d of 1..%d", s, v)
			break
		}
		time.Sleep(time.Millisecond)
	}
	if summed.Load() == last {
		failf("the summing goroutine stopped at %d", last)
	}
	fmt.Printf("done: %d restart(s)\n", restarts)
	if wait {
		<-usr2
	}
	if bad {
		fmt.Println("FAIL")
		os.Exit(1)
	}
	fmt.Println("PASS")
}
