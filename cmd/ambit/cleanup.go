package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/redirect"
)

// newCleanupCmd removes the capture an agent left on the node (both modes): for uninstalling, since a stopping
// agent keeps capture in place on purpose so that its successor re-adopts it.
func newCleanupCmd(stdout io.Writer) *cobra.Command {
	var netns, pinDir string
	envs := map[string]string{}
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove the node's traffic capture (after uninstalling the agent)",
		Long: `Remove everything the agent installed for traffic capture on this node, in either mode: the pinned
TCX links and maps under --pin-dir, the "ambit" nftables table, and the policy routing rule and table. A
stopping agent leaves capture in place so that the next agent re-adopts it without a gap; run this on each
node after uninstalling Ambit (pods still enrolled then lose their TCP traffic until it runs). Idempotent.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags(), envs); err != nil {
				return err
			}
			if err := redirect.Cleanup(cmd.Context(), redirect.Options{NetNS: netns, PinDir: pinDir}); err != nil {
				return fmt.Errorf("clean up capture: %w", err)
			}
			fmt.Fprintln(stdout, "capture removed")
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&netns, "netns", "", "network namespace path (default: the process's)")
	envs["netns"] = "AMBIT_NETNS"
	fs.StringVar(&pinDir, "pin-dir", "/sys/fs/bpf/ambit", "bpffs directory of pinned capture state")
	envs["pin-dir"] = "AMBIT_PIN_DIR"
	return cmd
}
