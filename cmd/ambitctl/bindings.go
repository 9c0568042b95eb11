package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/mesh/binding"
)

// bindingJSON is one row of `waypoint bindings -o json`; the keys are part of the CLI contract.
type bindingJSON struct {
	Kind      string             `json:"kind"`
	Namespace string             `json:"namespace"`
	Name      string             `json:"name"`
	Waypoint  *string            `json:"waypoint"`
	Condition *binding.Condition `json:"condition"`
}

func newBindingsCmd(rf *rootFlags) *cobra.Command {
	cf := &configFlags{}
	var output string
	cmd := &cobra.Command{
		Use:   "bindings -f FILE...",
		Short: "Show the waypoint bound to every Service, ServiceEntry, Pod and WorkloadEntry in local files",
		Long: `Compile Kubernetes objects from local files with istiod's waypoint rules and print, for every
Service, ServiceEntry, Pod and WorkloadEntry, the bound waypoint and the istio.io/WaypointBound condition.
Services and ServiceEntries show their service waypoint; Pods and WorkloadEntries their workload waypoint.`,
		Example: `  ambitctl waypoint bindings -f config.yaml
  ambitctl waypoint bindings -f manifests/ -n shop -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			res, err := cf.compile()
			if err != nil {
				return err
			}
			rows := make([]bindingJSON, 0, len(res.Bindings))
			for _, b := range res.Bindings {
				if rf.namespace != "" && b.Namespace != rf.namespace {
					continue
				}
				row := bindingJSON{Kind: b.Kind, Namespace: b.Namespace, Name: b.Name, Condition: b.Condition}
				if b.Waypoint != "" {
					row.Waypoint = &b.Waypoint
				}
				rows = append(rows, row)
			}
			if output != outputShort {
				return writeStructured(cmd.OutOrStdout(), output, rows)
			}
			w := newTable(cmd.OutOrStdout(), 3)
			fmt.Fprintln(w, "KIND\tNAMESPACE\tNAME\tWAYPOINT\tSTATUS\tREASON\tMESSAGE")
			for _, r := range rows {
				wp, status, reason, msg := "None", "-", "-", "-"
				if r.Waypoint != nil {
					wp = *r.Waypoint
				}
				if r.Condition != nil {
					status, reason, msg = r.Condition.Status, r.Condition.Reason, r.Condition.Message
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Kind, r.Namespace, r.Name, wp, status, reason, msg)
			}
			return w.Flush()
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", outputShort, "Output format: short, json or yaml")
	return cmd
}
