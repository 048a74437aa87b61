package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ckpt/ckpt/checkpoint"
)

// selfFlags are the hidden flags of `ckpt checkpoint` that the
// self-checkpoint libraries (package self, include/ckpt.h) use:
//
//	ckpt checkpoint --self-tid TID --self-fd N -o IMAGE PID
//
// Thread TID of PID (ckpt's parent) is blocked in read() on the pipe whose
// write end is ckpt's descriptor N. ckpt checkpoints PID without itself,
// with that read returning end of file in the image, and then answers on
// descriptor N with one line the libraries parse:
//
//	ckpt-id ID       the image is complete; ID is its checkpoint id (> 0)
//	ckpt-error MSG   nothing usable was written; MSG says why
//
// and exits (0 or 1). Warnings still go to stderr; errors only to the pipe,
// since the library hands them to its caller.
type selfFlags struct {
	tid, fd int
}

func (s *selfFlags) add(c *cobra.Command) {
	c.Flags().IntVar(&s.tid, "self-tid", 0, "for the self-checkpoint library: the calling thread")
	c.Flags().IntVar(&s.fd, "self-fd", -1, "for the self-checkpoint library: ckpt's write end of its pipe")
	c.Flags().MarkHidden("self-tid")
	c.Flags().MarkHidden("self-fd")
}

// run performs a self-checkpoint and reports its outcome on the pipe.
func (s *selfFlags) run(opts checkpoint.Options, out string) error {
	if s.fd < 3 {
		return fmt.Errorf("checkpoint: --self-fd must name the pipe ckpt inherited (a descriptor above 2)")
	}
	pipe := os.NewFile(uintptr(s.fd), "self-checkpoint pipe")
	if pipe == nil {
		return fmt.Errorf("checkpoint: --self-fd %d is not a descriptor", s.fd)
	}
	defer pipe.Close()
	// The caller may be gone by the time ckpt answers.
	signal.Ignore(syscall.SIGPIPE)
	st, err := s.checkpoint(opts, out)
	if err != nil {
		msg := strings.ReplaceAll(err.Error(), "\n", " ")
		fmt.Fprintf(pipe, "ckpt-error %s\n", msg)
		return &exitError{code: 1}
	}
	if _, err := fmt.Fprintf(pipe, "ckpt-id %d\n", st.ID); err != nil {
		return fmt.Errorf("checkpoint: answer the caller: %w", err)
	}
	return nil
}

func (s *selfFlags) checkpoint(opts checkpoint.Options, out string) (*checkpoint.Stats, error) {
	if s.tid <= 0 {
		return nil, fmt.Errorf("checkpoint: --self-tid must be the calling thread's id")
	}
	if out == "" || out == "-" {
		return nil, fmt.Errorf("checkpoint: a self-checkpoint needs an image file (-o FILE)")
	}
	if opts.Pid != os.Getppid() {
		return nil, fmt.Errorf("checkpoint: a self-checkpoint is asked for by ckpt's parent, not by %d", opts.Pid)
	}
	opts.SelfTid, opts.SelfFd = s.tid, s.fd
	f := &imageFile{path: out}
	opts.Out = f
	st, err := checkpoint.Run(opts)
	if cerr := f.close(err != nil); err == nil && cerr != nil {
		err = fmt.Errorf("checkpoint: write %s: %w", out, cerr)
	}
	if err == nil && f.f == nil {
		err = fmt.Errorf("checkpoint: no image written to %s", out)
	}
	if err != nil {
		return nil, err
	}
	return st, nil
}
