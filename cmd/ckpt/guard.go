package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/ckpt/ckpt/resource"
)

// repairGuardCmd is the child a checkpoint starts when it keeps TCP
// connections in repair mode (see resource.RunRepairGuard): its control
// socket is descriptor 3.
func repairGuardCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "__repair-guard",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return resource.RunRepairGuard(os.NewFile(3, "guard"))
		},
	}
}
