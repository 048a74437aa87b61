package main

import (
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"
)

// TestNotifyAsync checks that a signal sent once armed is closed reaches
// the channel, as with signal.Notify.
func TestNotifyAsync(t *testing.T) {
	c := make(chan os.Signal, 1)
	armed := notifyAsync(c, syscall.SIGUSR1)
	defer signal.Reset(syscall.SIGUSR1)
	select {
	case <-armed:
	case <-time.After(5 * time.Second):
		t.Fatal("signals not armed after 5 s")
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-c:
		if s != syscall.SIGUSR1 {
			t.Fatalf("got %v, want SIGUSR1", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SIGUSR1 did not arrive")
	}
}
