package resource

import (
	"encoding/binary"
	"fmt"

	"github.com/ckpt/ckpt/ptrace"
)

// Call is one system call of a batch.
type Call struct {
	Nr   uintptr
	Args []uint64
	// Err, if set, turns the call's errno into the error Batch returns,
	// naming the object the call was for.
	Err func(error) error
}

// batchEntry is the size of one entry of the stub's batch loop:
// {nr, a1..a6, result}.
const batchEntry = 64

// batchReserve is the end of the scratch area that FdPuller.receive uses.
const batchReserve = 128

// DataLen is how much of the scratch area, from its start, callers may Put
// data in that a batch's calls point to: Batch lays its entries out after
// it, so that they never overlap.
func (t *Target) DataLen() uint64 { return t.ScratchLen / 2 }

// Batch runs calls in order, stopping at the first that fails, and returns
// the result of each. Calls must be independent of each other's results
// (what a call points to must be Put before, below DataLen). In a stub it
// costs one ptrace stop per scratch-full of calls instead of one per call:
// the stub's own batch loop runs them (restart/stub.go). A target without
// one runs them one by one, with the same results and errors.
func (t *Target) Batch(calls []Call) ([]uint64, error) {
	res := make([]uint64, 0, len(calls))
	if len(calls) == 0 {
		return res, nil
	}
	base := t.DataLen()
	per := 0
	if t.ScratchLen > base+batchReserve {
		per = int((t.ScratchLen - base - batchReserve) / batchEntry)
	}
	if t.Inj.BatchAddr == 0 || per < 2 {
		for i, c := range calls {
			r, err := t.Syscall(c.Nr, c.Args...)
			if err != nil {
				return res, callError(c, i, err)
			}
			res = append(res, r)
		}
		return res, nil
	}
	le := binary.LittleEndian
	buf := make([]byte, min(per, len(calls))*batchEntry)
	first := t.Scratch + base
	for done := 0; done < len(calls); {
		chunk := calls[done:min(done+per, len(calls))]
		b := buf[:len(chunk)*batchEntry]
		clear(b)
		for i, c := range chunk {
			if len(c.Args) > 6 {
				panic("resource: more than 6 syscall arguments")
			}
			e := b[i*batchEntry:]
			le.PutUint64(e, uint64(c.Nr))
			for j, a := range c.Args {
				le.PutUint64(e[8+8*j:], a)
			}
		}
		if err := t.WriteMem(first, b); err != nil {
			return res, err
		}
		end := first + uint64(len(b))
		stop, err := t.Inj.RunBatch(first, end)
		if err != nil {
			return res, err
		}
		n := int(stop-first) / batchEntry
		ran := n
		if stop < end {
			ran++ // the one that failed stored its result too
		}
		if err := t.ReadMem(first, b[:ran*batchEntry]); err != nil {
			return res, err
		}
		for i := 0; i < n; i++ {
			res = append(res, le.Uint64(b[i*batchEntry+56:]))
		}
		if stop < end {
			r := le.Uint64(b[n*batchEntry+56:])
			err := ptrace.Errno(r)
			if err == nil { // cannot happen: the loop stops only on errors
				err = fmt.Errorf("batch stopped at a result of %#x", r)
			}
			return res, callError(chunk[n], done+n, err)
		}
		done += len(chunk)
	}
	return res, nil
}

// answerSlot is the room each call of batchAnswers has for its answer.
const answerSlot = 32

// batchAnswers runs n calls that each write an answer of up to 32 bytes
// (a struct the kernel fills, e.g. a sigaction) and hands each to use:
// call(i, out) makes call i, writing at out. It batches as many calls as
// the scratch area has slots for.
func (t *Target) batchAnswers(n int, call func(i int, out uint64) Call, use func(i int, answer []byte)) error {
	per := int(t.DataLen() / answerSlot)
	if per == 0 {
		return fmt.Errorf("scratch area of %d too small for a call's answer", t.Pid)
	}
	buf := make([]byte, min(per, n)*answerSlot)
	for done := 0; done < n; {
		k := min(per, n-done)
		calls := make([]Call, k)
		for i := range calls {
			calls[i] = call(done+i, t.Scratch+uint64(i*answerSlot))
		}
		if _, err := t.Batch(calls); err != nil {
			return err
		}
		b := buf[:k*answerSlot]
		if err := t.ReadMem(t.Scratch, b); err != nil {
			return err
		}
		for i := 0; i < k; i++ {
			use(done+i, b[i*answerSlot:(i+1)*answerSlot])
		}
		done += k
	}
	return nil
}

// callError describes the failure of call i of a batch.
func callError(c Call, i int, err error) error {
	if c.Err != nil {
		return c.Err(err)
	}
	return fmt.Errorf("system call %d (call %d of a batch): %w", c.Nr, i, err)
}

// batchData lays out, from the start of the scratch area, the memory the
// calls of one batch point to, so that no two overlap and none reaches the
// entries.
type batchData struct {
	t   *Target
	off uint64
}

// put copies b into the next free bytes and returns its address.
func (d *batchData) put(b []byte) (uint64, error) {
	if d.off+uint64(len(b)) > d.t.DataLen() {
		return 0, fmt.Errorf("scratch area of %d too small for %d bytes of call arguments", d.t.Pid, d.off+uint64(len(b)))
	}
	addr, err := d.t.Put(d.off, b)
	d.off = (d.off + uint64(len(b)) + 7) &^ 7
	return addr, err
}

// putString copies s, NUL-terminated.
func (d *batchData) putString(s string) (uint64, error) {
	return d.put(append([]byte(s), 0))
}
