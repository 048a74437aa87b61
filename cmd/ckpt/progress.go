package main

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

// progress shows, on a terminal, how a checkpoint or restart that takes
// more than a second is going: the phase, bytes so far (of total, when
// known), and the rate. It is silent when stderr is not a terminal.
type progress struct {
	count atomic.Uint64
	stop  chan struct{}
	done  chan struct{}
}

// startProgress starts the display; total is 0 when unknown. CKPT_PROGRESS
// =now shows it at once (for tests) instead of after a second.
func startProgress(phase string, total uint64) *progress {
	p := &progress{stop: make(chan struct{}), done: make(chan struct{})}
	if !isTerminal(os.Stderr) {
		close(p.done)
		return p
	}
	delay := time.Second
	if os.Getenv("CKPT_PROGRESS") == "now" {
		delay = 0
	}
	start := time.Now()
	go func() {
		defer close(p.done)
		shown := false
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for first := true; ; first = false {
			if !first || delay > 0 {
				select {
				case <-p.stop:
					if shown {
						fmt.Fprint(os.Stderr, "\r\033[K")
					}
					return
				case <-tick.C:
				}
			}
			el := time.Since(start)
			if el < delay {
				continue
			}
			shown = true
			n := p.count.Load()
			line := fmt.Sprintf("ckpt: %s %s", phase, mib(n))
			if total > 0 {
				line += fmt.Sprintf(" of %s (%d%%)", mib(total), n*100/total)
			}
			line += fmt.Sprintf(", %.2f GB/s", float64(n)/max(el.Seconds(), 1e-3)/1e9)
			fmt.Fprintf(os.Stderr, "\r\033[K%s", line)
		}
	}()
	return p
}

func (p *progress) finish() {
	select {
	case <-p.done:
		return
	default:
	}
	close(p.stop)
	<-p.done
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
