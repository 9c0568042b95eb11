package main

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// explainJSON is the `explain -o json` document; the keys are part of the CLI contract.
type explainJSON struct {
	Path      string  `json:"path"`
	Waypoint  *string `json:"waypoint"`
	Protocol  string  `json:"protocol"`
	NextHop   *string `json:"nextHop"`
	Authority *string `json:"authority"`
	Reason    string  `json:"reason"`
}

func newExplainCmd(_ *rootFlags) *cobra.Command {
	cf := &configFlags{}
	var from, to, output string
	cmd := &cobra.Command{
		Use:   "explain -f FILE... --from NS/POD --to IP:PORT",
		Short: "Explain how Ambit routes a connection from a pod to an address",
		Long: `Compile Kubernetes objects from local files and show the route the node agent plans for a
connection from a pod to an original destination: through a waypoint, direct over HBONE, plain TCP,
passthrough, or rejected, with the reason.`,
		Example: `  ambitctl explain -f config.yaml --from shop/client --to 10.96.20.1:9080
  ambitctl explain -f config.yaml --from shop/client --to 10.244.1.22:9080 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if from == "" || to == "" {
				return badInput("--from NAMESPACE/POD and --to IP:PORT are required")
			}
			ns, pod, ok := strings.Cut(from, "/")
			if !ok || ns == "" || pod == "" {
				return badInput("--from must be NAMESPACE/POD, got %q", from)
			}
			dst, err := netip.ParseAddrPort(to)
			if err != nil {
				return badInput("--to must be IP:PORT, got %q", to)
			}
			res, err := cf.compile()
			if err != nil {
				return err
			}
			store := state.NewStore()
			store.Replace(&res.Snapshot)
			var src *state.Workload
			for _, w := range res.Snapshot.Workloads {
				if w.Namespace == ns && w.Name == pod && strings.Contains(w.UID, "//Pod/") {
					src = w
				}
			}
			if src == nil {
				return badInput("pod %s/%s with an IP is not in the configuration", ns, pod)
			}
			out := explain(store, src, dst)
			if output != outputShort {
				return writeStructured(cmd.OutOrStdout(), output, out)
			}
			str := func(p *string) string {
				if p == nil {
					return "-"
				}
				return *p
			}
			w := newTable(cmd.OutOrStdout(), 1)
			fmt.Fprintf(w, "PATH:\t%s\nWAYPOINT:\t%s\nPROTOCOL:\t%s\nNEXT HOP:\t%s\nAUTHORITY:\t%s\nREASON:\t%s\n",
				out.Path, str(out.Waypoint), out.Protocol, str(out.NextHop), str(out.Authority), out.Reason)
			return w.Flush()
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVar(&from, "from", "", "source pod as NAMESPACE/POD")
	cmd.Flags().StringVar(&to, "to", "", "original destination as IP:PORT")
	cmd.Flags().StringVarP(&output, "output", "o", outputShort, "Output format: short, json or yaml")
	return cmd
}

// explain plans the connection as the source's node agent would. A source that is not captured never
// reaches an agent, so its traffic leaves as plain TCP to the original destination.
func explain(s *state.Store, src *state.Workload, dst netip.AddrPort) explainJSON {
	if src.Protocol != state.TunnelHBONE {
		hop := dst.String()
		return explainJSON{Path: route.PathPassthrough.String(), Protocol: route.ProtocolTCP.String(), NextHop: &hop,
			Reason: fmt.Sprintf("source %s/%s is not enrolled in ambient mode (istio.io/dataplane-mode), so no node agent captures its traffic: plain TCP to %s", src.Namespace, src.Name, dst)}
	}
	var srcIP netip.Addr
	if len(src.Addresses) > 0 {
		srcIP = src.Addresses[0]
	}
	req := &route.Request{Source: src, SourceIP: srcIP, Destination: dst, Network: src.Network} // the agent on the source's network
	p := route.Build(s, req)
	out := explainJSON{Path: p.Path.String(), Protocol: p.Protocol.String(), Reason: route.Describe(s, req, &p)}
	if p.Path == route.PathReject {
		out.Protocol = "-"
	}
	if n := route.WaypointName(s, &p); n != "" && p.Path == route.PathWaypoint {
		out.Waypoint = &n
	}
	if p.NextHop.IsValid() {
		h := p.NextHop.String()
		out.NextHop = &h
	}
	if p.Authority.IsValid() {
		a := p.Authority.String()
		out.Authority = &a
	} else if p.DoubleHBONE() { // both CONNECTs of double HBONE carry the service hostname
		a := net.JoinHostPort(p.Host, strconv.Itoa(int(p.HostPort)))
		out.Authority = &a
	}
	return out
}
