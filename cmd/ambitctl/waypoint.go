package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/mesh/binding"
	"github.com/ambit-mesh/ambit/mesh/istio"
)

const defaultWaypointName = "waypoint"

var validTrafficTypes = []string{binding.TrafficAll, binding.TrafficNone, binding.TrafficService, binding.TrafficWorkload}

// waypointFlags are the flags of `ambitctl waypoint` and its subcommands, named as istioctl's.
type waypointFlags struct {
	*rootFlags
	name        string
	trafficType string
	revision    string
}

func newWaypointCmd(rf *rootFlags) *cobra.Command {
	wf := &waypointFlags{rootFlags: rf}
	cmd := &cobra.Command{
		Use:         "waypoint",
		Annotations: istioctlParity(),
		Short:       "Manage waypoint configuration",
		Long:        "A group of commands used to manage waypoint configuration",
		Example: `  # Generate a waypoint as yaml
  ambitctl waypoint generate --namespace default

  # Show which waypoint each object in a configuration is bound to
  ambitctl waypoint bindings -f config.yaml`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 0 {
				return fmt.Errorf("unknown subcommand %q", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.HelpFunc()(cmd, args)
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&wf.name, "name", defaultWaypointName, "name of the waypoint")
	cmd.AddCommand(newGenerateCmd(wf), newBindingsCmd(rf))
	addClusterCommands(cmd, wf)
	return cmd
}

func newGenerateCmd(wf *waypointFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:         "generate",
		Annotations: istioctlParity(),
		Short:       "Generate a waypoint configuration",
		Long:        "Generate a waypoint configuration as YAML",
		Example: `  # Generate a waypoint as yaml
  ambitctl waypoint generate --namespace default`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			gw, err := makeGateway(wf, wf.namespace)
			if err != nil {
				return fmt.Errorf("failed to create gateway: %w", err)
			}
			b, err := yaml.Marshal(gw)
			if err != nil {
				return fmt.Errorf("encode gateway: %w", err)
			}
			// Strip what an unsent object carries, as istioctl does.
			out := strings.ReplaceAll(string(b), "  creationTimestamp: null\n", "")
			out = strings.ReplaceAll(out, "status: {}\n", "")
			_, err = fmt.Fprint(cmd.OutOrStdout(), out)
			return err
		},
	}
	cmd.Flags().StringVar(&wf.trafficType, "for", "", fmt.Sprintf("Specify the traffic type %v for the waypoint", validTrafficTypes))
	cmd.Flags().StringVarP(&wf.revision, "revision", "r", "", "The revision to label the waypoint with")
	return cmd
}

// makeGateway builds the waypoint Gateway exactly as istioctl does; ns may be empty (omitted).
func makeGateway(wf *waypointFlags, ns string) (*gwv1.Gateway, error) {
	if wf.name == "" {
		wf.name = defaultWaypointName
	} else if wf.name == binding.None {
		return nil, fmt.Errorf("invalid name provided for waypoint, 'none' is a reserved value")
	}
	gw := &gwv1.Gateway{
		TypeMeta:   metav1.TypeMeta{Kind: "Gateway", APIVersion: "gateway.networking.k8s.io/v1"},
		ObjectMeta: metav1.ObjectMeta{Name: wf.name, Namespace: ns},
		Spec: gwv1.GatewaySpec{
			GatewayClassName: istio.WaypointClassName,
			Listeners:        []gwv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}},
		},
	}
	if wf.trafficType != "" {
		if !slices.Contains(validTrafficTypes, wf.trafficType) {
			return nil, fmt.Errorf("invalid traffic type: %s. Valid options are: %v", wf.trafficType, validTrafficTypes)
		}
		gw.Labels = map[string]string{istio.LabelWaypointFor: wf.trafficType}
	}
	if wf.revision != "" {
		if gw.Labels == nil {
			gw.Labels = map[string]string{}
		}
		gw.Labels[istio.LabelRevision] = wf.revision
	}
	return gw, nil
}
