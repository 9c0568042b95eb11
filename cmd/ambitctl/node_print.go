package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/admin/dump"
)

// This file renders a config dump the way `istioctl ztunnel-config` does (istioctl/pkg/writer/ztunnel/
// configdump): same columns, sort orders, tabwriter settings and placeholders, so that the output for a
// given dump is byte-for-byte istioctl's. Where istioctl's order depends on Go map iteration (ties, and
// the -o json order of workloads and certificates), Ambit's is deterministic. The functions are pure.

// workloadFilter selects workloads; empty fields match everything. Comparisons ignore case.
type workloadFilter struct {
	name, namespace, address, node string
}

func (f *workloadFilter) match(w *dump.Workload) bool {
	if f.name != "" && !strings.EqualFold(w.Name, f.name) {
		return false
	}
	if f.namespace != "" && !strings.EqualFold(w.Namespace, f.namespace) {
		return false
	}
	if f.address != "" && !slices.ContainsFunc(w.WorkloadIPs, func(ip string) bool { return strings.EqualFold(ip, f.address) }) {
		return false
	}
	return f.node == "" || strings.EqualFold(w.Node, f.node)
}

// selectWorkloads returns the matching workloads sorted by "<namespace>.<name>", then node.
func selectWorkloads(d *dump.ConfigDump, f workloadFilter) []*dump.Workload {
	out := []*dump.Workload{}
	for _, w := range d.Workloads {
		if f.match(w) {
			out = append(out, w)
		}
	}
	slices.SortStableFunc(out, func(a, b *dump.Workload) int {
		return cmp.Or(strings.Compare(a.Namespace+"."+a.Name, b.Namespace+"."+b.Name), strings.Compare(a.Node, b.Node))
	})
	return out
}

func printWorkloads(w io.Writer, d *dump.ConfigDump, f workloadFilter) error {
	t := newTable(w, 1)
	fmt.Fprintln(t, "NAMESPACE\tPOD NAME\tADDRESS\tNODE\tWAYPOINT\tPROTOCOL")
	svcs := sortedServices(d.Services)
	for _, wl := range selectWorkloads(d, f) {
		addr := strings.Join(wl.WorkloadIPs, ",")
		if addr == "" {
			addr = wl.Hostname
		}
		fmt.Fprintf(t, "%v\t%v\t%v\t%v\t%v\t%v\n", wl.Namespace, wl.Name, addr, wl.Node, waypointName(wl.Waypoint, svcs), wl.Protocol)
	}
	return t.Flush()
}

// waypointName resolves a waypoint reference to the name of the Service whose "<namespace>/<hostname>" or
// one of whose VIPs ("<network>/<ip>") equals its destination: "None" without a waypoint, "NA" when no
// service matches.
func waypointName(g *dump.GatewayAddress, svcs []*dump.Service) string {
	if g == nil {
		return "None"
	}
	for _, s := range svcs {
		if s.Namespace+"/"+s.Hostname == g.Destination || slices.Contains(s.Vips, g.Destination) {
			return s.Name
		}
	}
	return "NA"
}

// sortedServices returns svcs sorted by namespace, name, hostname.
func sortedServices(svcs []*dump.Service) []*dump.Service {
	out := slices.Clone(svcs)
	slices.SortStableFunc(out, func(a, b *dump.Service) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name), strings.Compare(a.Hostname, b.Hostname))
	})
	return out
}

func selectServices(d *dump.ConfigDump, namespace string) []*dump.Service {
	out := []*dump.Service{}
	for _, s := range sortedServices(d.Services) {
		if namespace == "" || strings.EqualFold(s.Namespace, namespace) {
			out = append(out, s)
		}
	}
	return out
}

func printServices(w io.Writer, d *dump.ConfigDump, namespace string) error {
	t := newTable(w, 1)
	fmt.Fprintln(t, "NAMESPACE\tSERVICE NAME\tSERVICE VIP\tWAYPOINT\tENDPOINTS")
	byUID := make(map[string]*dump.Workload, len(d.Workloads))
	for _, wl := range d.Workloads {
		if _, dup := byUID[wl.UID]; !dup {
			byUID[wl.UID] = wl
		}
	}
	all := sortedServices(d.Services)
	for _, s := range selectServices(d, namespace) {
		ips := make([]string, 0, len(s.Vips))
		for _, v := range s.Vips {
			_, ip, _ := strings.Cut(v, "/")
			ips = append(ips, ip)
		}
		healthy := 0
		for _, ep := range s.Endpoints {
			if wl := byUID[ep.WorkloadUID]; wl != nil && wl.Status == "Healthy" {
				healthy++
			}
		}
		fmt.Fprintf(t, "%v\t%v\t%v\t%v\t%v\n", s.Namespace, s.Name, strings.Join(ips, ","), waypointName(s.Waypoint, all),
			fmt.Sprintf("%d/%d", healthy, len(s.Endpoints)))
	}
	return t.Flush()
}

func selectPolicies(d *dump.ConfigDump, namespace string) []*dump.Policy {
	out := []*dump.Policy{}
	for _, p := range d.Policies {
		if namespace == "" || strings.EqualFold(p.Namespace, namespace) {
			out = append(out, p)
		}
	}
	slices.SortStableFunc(out, func(a, b *dump.Policy) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	return out
}

func printPolicies(w io.Writer, d *dump.ConfigDump, namespace string) error {
	t := newTable(w, 1)
	fmt.Fprintln(t, "NAMESPACE\tPOLICY NAME\tACTION\tSCOPE")
	for _, p := range selectPolicies(d, namespace) {
		fmt.Fprintf(t, "%v\t%v\t%v\t%v\n", p.Namespace, p.Name, p.Action, p.Scope)
	}
	return t.Flush()
}

// printCertificates prints one row per certificate in the dump's order (padding 5): the chain as Leaf then
// Intermediate, then each root as Root (in dumps without rootCerts the chain's last element is the Root).
// An identity without certificates gets one NA row. VALID CERT is whether now is within the validity.
func printCertificates(w io.Writer, d *dump.ConfigDump, now time.Time) error {
	t := newTable(w, 5)
	fmt.Fprintln(t, "CERTIFICATE NAME\tTYPE\tSTATUS\tVALID CERT\tSERIAL NUMBER\tNOT AFTER\tNOT BEFORE")
	for _, c := range d.Certificates {
		st := c.State
		if strings.Contains(st, "Unavailable") {
			st = "Unavailable"
		}
		if len(c.CertChain) == 0 {
			fmt.Fprintf(t, "%v\t%v\t%v\t%v\t%v\t%v\t%v\n", c.Identity, "NA", st, false, "NA", "NA", "NA")
			continue
		}
		legacy := len(c.RootCerts) == 0
		row := func(kind string, ce *dump.Cert) {
			n, _ := new(big.Int).SetString(ce.SerialNumber, 10)
			fmt.Fprintf(t, "%v\t%v\t%v\t%v\t%x\t%v\t%v\n", c.Identity, kind, st, certValid(ce, now), n,
				orNA(ce.ExpirationTime), orNA(ce.ValidFrom))
		}
		for i, ce := range c.CertChain {
			kind := "Intermediate"
			switch {
			case i == 0:
				kind = "Leaf"
			case i == len(c.CertChain)-1 && legacy:
				kind = "Root"
			}
			row(kind, ce)
		}
		for _, ce := range c.RootCerts {
			row("Root", ce)
		}
	}
	return t.Flush()
}

func orNA(s string) string {
	if s == "" {
		return "NA"
	}
	return s
}

// certValid reports whether now is strictly between the certificate's RFC 3339 validity bounds.
func certValid(c *dump.Cert, now time.Time) bool {
	from, err1 := time.Parse(time.RFC3339, c.ValidFrom)
	to, err2 := time.Parse(time.RFC3339, c.ExpirationTime)
	return err1 == nil && err2 == nil && now.After(from) && now.Before(to)
}

// connFilter selects the connections of workloadState. name may be "<name>.<namespace>" when namespace is
// empty. Namespace compares exactly, name ignoring case, as istioctl does.
type connFilter struct {
	name, namespace string
	direction       string // "", "inbound" or "outbound"
	raw             bool
}

func (f connFilter) normalized() connFilter {
	if f.name != "" && f.namespace == "" {
		if n, ns, ok := strings.Cut(f.name, "."); ok {
			f.name, f.namespace = n, ns
		}
	}
	return f
}

// selectWorkloadStates returns the matching workloadState entries sorted by namespace, name (then UID).
func selectWorkloadStates(d *dump.ConfigDump, f connFilter) []dump.WorkloadState {
	f = f.normalized()
	out := []dump.WorkloadState{}
	for _, uid := range slices.Sorted(maps.Keys(d.WorkloadState)) {
		ws := d.WorkloadState[uid]
		if f.namespace != "" && f.namespace != ws.Info.Namespace {
			continue
		}
		if f.name != "" && !strings.EqualFold(f.name, ws.Info.Name) {
			continue
		}
		out = append(out, ws)
	}
	slices.SortStableFunc(out, func(a, b dump.WorkloadState) int {
		return cmp.Or(strings.Compare(a.Info.Namespace, b.Info.Namespace), strings.Compare(a.Info.Name, b.Info.Name))
	})
	return out
}

func printConnections(w io.Writer, d *dump.ConfigDump, f connFilter) error {
	// IPs are shown as the hostname of the service whose first VIP they are, else as "<pod>.<namespace>" of
	// the workload whose first IP they are; with --raw as they are.
	names := map[string]string{}
	for _, wl := range slices.Backward(d.Workloads) {
		ip := "None"
		if len(wl.WorkloadIPs) > 0 && wl.WorkloadIPs[0] != "" {
			ip = wl.WorkloadIPs[0]
		}
		names[ip] = wl.Name + "." + wl.Namespace
	}
	for _, s := range slices.Backward(d.Services) {
		ip := "None"
		if len(s.Vips) > 0 {
			if _, v, _ := strings.Cut(s.Vips[0], "/"); v != "" {
				ip = v
			}
		}
		names[ip] = s.Hostname
	}
	lookup := func(addr string) string {
		if f.raw {
			return addr
		}
		ip, port, _ := net.SplitHostPort(addr)
		if n, ok := names[ip]; ok {
			return net.JoinHostPort(n, port)
		}
		return addr
	}
	t := newTable(w, 1)
	fmt.Fprintln(t, "WORKLOAD\tDIRECTION\tLOCAL\tREMOTE\tREMOTE TARGET\tPROTOCOL")
	for _, ws := range selectWorkloadStates(d, f) {
		name := ws.Info.Name + "." + ws.Info.Namespace
		if f.direction != "outbound" {
			for _, c := range ws.Connections.Inbound {
				fmt.Fprintf(t, "%v\tInbound\t%v\t%v\t%v\t%v\n", name, lookup(c.ActualDst), lookup(c.Src), c.OriginalDst, c.Protocol)
			}
		}
		if f.direction != "inbound" {
			for _, c := range ws.Connections.Outbound {
				fmt.Fprintf(t, "%v\tOutbound\t%v\t%v\t%v\t%v\n", name, lookup(c.Src), lookup(c.ActualDst), lookup(c.OriginalDst), c.Protocol)
			}
		}
	}
	return t.Flush()
}

// printAll prints every summary, each preceded by a blank line and, with headers, a banner.
func printAll(w io.Writer, d *dump.ConfigDump, withHeaders bool, now time.Time) error {
	sections := []struct {
		banner string
		print  func() error
	}{
		{"WORKLOAD INFO", func() error { return printWorkloads(w, d, workloadFilter{}) }},
		{"SERVICE INFO", func() error { return printServices(w, d, "") }},
		{"POLICY INFO", func() error { return printPolicies(w, d, "") }},
		{"SECRET INFO", func() error { return printCertificates(w, d, now) }},
		{"CONNECTIONS INFO", func() error { return printConnections(w, d, connFilter{}) }},
	}
	for _, s := range sections {
		if _, err := io.WriteString(w, "\n"); err != nil {
			return err
		}
		if withHeaders {
			if _, err := io.WriteString(w, "------ "+s.banner+" ------\n\n"); err != nil {
				return err
			}
		}
		if err := s.print(); err != nil {
			return err
		}
	}
	return nil
}

// writeDump prints v as JSON with a 4-space indent, or as YAML converted from that JSON, followed by a
// newline, as istioctl does (so YAML output ends with an empty line).
func writeDump(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	return writeRaw(w, format, b)
}

// writeRaw prints JSON b as is, or converted to YAML, followed by a newline.
func writeRaw(w io.Writer, format string, b []byte) error {
	if format == outputYAML {
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		b = y
	}
	_, err := fmt.Fprintln(w, string(b))
	return err
}
