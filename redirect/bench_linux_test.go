package redirect_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/test/lab"
)

// serveByteEcho runs a server on :9090 in pod that echoes every byte.
func serveByteEcho(tb testing.TB, pod *lab.Pod) {
	tb.Helper()
	ln, err := pod.NS.Listen(tb.Context(), "tcp", ":9090")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var cwg sync.WaitGroup
		defer cwg.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
}

// BenchmarkCaptureLab compares a pod's connections that are not captured ("direct") with the same connections
// captured on the client's node and relayed by a trivial splice proxy, in eBPF and in TPROXY mode. The three
// clients sit on three nodes (no agent; an eBPF agent; a TPROXY agent) and talk to one server pod on a fourth
// node; every iteration measures one operation of each, in rotating order, so that the machine's noise hits all
// three alike. "connect" is a connection set-up with one 1-byte exchange and close; "rr" is a 1-byte
// request/response on an open connection. Metrics: mean ns per operation of each mode, and their ratios.
func BenchmarkCaptureLab(b *testing.B) {
	l := lab.Start(b, lab.Options{Nodes: 4, PodsPerNode: 1})
	server := l.Nodes[3].Pods[0]
	serveByteEcho(b, server)
	dst := netip.AddrPortFrom(server.IP, 9090).String()
	names := []string{"direct", string(redirect.ModeTPROXY), string(redirect.ModeEBPF)}
	clients := make([]*lab.Pod, len(names))
	for i, mode := range names {
		clients[i] = l.Nodes[i].Pods[0]
		if mode != "direct" {
			a := startAgent(b, l.Nodes[i], agentOptions(l.Nodes[i], redirect.Mode(mode)))
			a.enroll(b, clients[i])
		}
	}
	report := func(b *testing.B, total []time.Duration) {
		for i, n := range names {
			b.ReportMetric(float64(total[i].Nanoseconds())/float64(b.N), n+"-ns/op")
		}
		idx := func(n string) float64 { return float64(total[slices.Index(names, n)]) }
		b.ReportMetric(idx("ebpf")/idx("direct"), "ebpf/direct")
		b.ReportMetric(idx("tproxy")/idx("direct"), "tproxy/direct")
		b.ReportMetric(idx("ebpf")/idx("tproxy"), "ebpf/tproxy")
	}
	b.Run("connect", func(b *testing.B) {
		// Each client dials from a thread inside its pod namespace, kept for the whole run.
		type op struct{ done chan error }
		reqs := make([]chan op, len(names))
		var wg sync.WaitGroup
		for i := range names {
			reqs[i] = make(chan op)
			wg.Add(1)
			go func() {
				defer wg.Done()
				clients[i].NS.Do(func() error {
					buf := make([]byte, 1)
					var d net.Dialer
					for o := range reqs[i] {
						o.done <- func() error {
							ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
							defer cancel()
							c, err := d.DialContext(ctx, "tcp", dst)
							if err != nil {
								return err
							}
							defer c.Close()
							if _, err := c.Write(buf); err != nil {
								return err
							}
							_, err = io.ReadFull(c, buf)
							return err
						}()
					}
					return nil
				})
			}()
		}
		defer func() {
			for _, r := range reqs {
				close(r)
			}
			wg.Wait()
		}()
		total := make([]time.Duration, len(names))
		done := make(chan error)
		b.ResetTimer()
		for n := range b.N {
			for k := range names {
				i := (n + k) % len(names)
				start := time.Now()
				reqs[i] <- op{done: done}
				if err := <-done; err != nil {
					b.Fatalf("%s: %v", names[i], err)
				}
				total[i] += time.Since(start)
			}
		}
		report(b, total)
	})
	b.Run("rr", func(b *testing.B) {
		conns := make([]net.Conn, len(names))
		for i := range names {
			c, err := clients[i].NS.Dial(b.Context(), "tcp", dst)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			conns[i] = c
		}
		buf := make([]byte, 1)
		total := make([]time.Duration, len(names))
		b.ResetTimer()
		for n := range b.N {
			for k := range names {
				i := (n + k) % len(names)
				start := time.Now()
				if _, err := conns[i].Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(conns[i], buf); err != nil {
					b.Fatal(err)
				}
				total[i] += time.Since(start)
			}
		}
		report(b, total)
	})
}
