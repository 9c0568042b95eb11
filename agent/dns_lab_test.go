package agent_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// queryFrom asks nameserver (an address only capture answers) from inside pod p, over proto.
func queryFrom(t *testing.T, p *lab.Pod, proto, nameserver, name string) (*dns.Msg, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.NS.Dial(ctx, proto, nameserver)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	co := &dns.Conn{Conn: c}
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

// TestDNSProxyAcrossRestarts: the DNS proxy keeps answering captured queries (UDP and TCP, to an IPv4 and an
// IPv6 nameserver address) across zero-gap restarts, in both capture modes: the DNS TCP listener and UDP
// socket are handed off with the others (the new agent could not bind the UDP port the old one holds).
func TestDNSProxyAcrossRestarts(t *testing.T) {
	tu.RequireRoot(t)
	for _, mode := range []string{agent.CaptureEBPF, agent.CaptureTPROXY} {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t, 1, 2, mode, func(l *lab.Lab) string {
				n0 := l.Nodes[0].Pods
				return `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app}
spec: {clusterIP: 10.96.0.10, selector: {app: server}, ports: [{name: http, port: 80, targetPort: http}]}
` + podYAML("client", "app", "client", n0[0]) + podYAML("server", "app", "server", n0[1])
			}, func(_ int, cfg *agent.Config) {
				cfg.DNSCapture = true
				cfg.DNSResolvConf = "/nonexistent" // no upstream: mesh names only
				cfg.DrainTimeout = time.Second
			})
			client := c.Lab.Nodes[0].Pods[0]
			check := func(t *testing.T, when string) {
				t.Helper()
				for _, proto := range []string{"udp", "tcp"} {
					for _, ns := range []string{"10.96.0.53:53", "[fd00:96::53]:53"} {
						r, err := queryFrom(t, client, proto, ns, "svc.app.svc.cluster.local.")
						if err != nil {
							t.Fatalf("%s, %s to %s: %v", when, proto, ns, err)
						}
						if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.96.0.10" {
							t.Fatalf("%s, %s to %s: answer %v", when, proto, ns, r.Answer)
						}
					}
				}
			}
			check(t, "first agent")
			for range 3 {
				c.RestartAgent(0)
				check(t, "new agent, old one draining")
				c.WaitDrained()
				check(t, "old agent gone")
			}
		})
	}
}

// podYAML is a Pod document for lab pod p with both its addresses (the DNS proxy answers only the
// addresses of local workloads).
func podYAML(name, ns, app string, p *lab.Pod) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: %s}}
spec: {nodeName: node%d, serviceAccountName: %s, containers: [{name: c, image: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: %s, podIPs: [{ip: %s}, {ip: %s}]}
`, name, ns, app, p.Node.Index, name, p.IP, p.IP, p.IP6)
}
