package self_test

import (
	"fmt"
	"log"

	"github.com/ckpt/ckpt/self"
)

// A long computation saves itself now and then. Started again with
// `ckpt restart /var/tmp/job.img`, it goes on from its last checkpoint.
func ExampleCheckpoint() {
	for step := 0; step < 100; step++ {
		// ... one step of work ...
		if step%10 != 0 {
			continue
		}
		res, err := self.Checkpoint("/var/tmp/job.img")
		switch {
		case err != nil:
			log.Printf("no checkpoint at step %d: %v", step, err) // carry on
		case res.Restarted:
			fmt.Printf("restarted at step %d\n", step)
		default:
			fmt.Printf("checkpoint %d at step %d\n", res.ID, step)
		}
	}
}
