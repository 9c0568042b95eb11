package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/relay"
)

// TestFlagFor is the deny/connect decision every proxy path shares.
func TestFlagFor(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, FlagNone},
		{"flag error deny", hbone.NewFlagError(http.StatusUnauthorized, FlagDeny, "RBAC: denied"), FlagDeny},
		{"flag error connect wraps a peer 401", fmt.Errorf("x: %w", hbone.NewFlagError(http.StatusServiceUnavailable, FlagConnect,
			"connect: %w", &hbone.StatusError{Code: http.StatusUnauthorized})), FlagConnect},
		{"peer answered 401", fmt.Errorf("dial: %w", &hbone.StatusError{Code: http.StatusUnauthorized}), FlagDeny},
		{"peer answered 503", &hbone.StatusError{Code: http.StatusServiceUnavailable}, FlagConnect},
		{"dial error", errors.New("connection refused"), FlagConnect},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := FlagFor(c.err); got != c.want {
				t.Errorf("FlagFor(%v) = %q, want %q", c.err, got, c.want)
			}
		})
	}
}

// TestRecorder checks that the metrics and the access-log line of a result come from the same values.
func TestRecorder(t *testing.T) {
	var buf bytes.Buffer
	m := New("test")
	rec := Recorder{Metrics: m, Log: slog.New(slog.NewTextHandler(&buf, nil))}
	conn := func(d connmgr.Direction) *connmgr.Conn {
		return &connmgr.Conn{Direction: d, Src: netip.MustParseAddrPort("10.0.0.1:5000"), Dst: netip.MustParseAddrPort("10.0.0.2:80"),
			Hop: netip.MustParseAddrPort("10.0.0.2:15008"), Authority: "10.0.0.2:80", Protocol: "HBONE", Start: time.Now(),
			Counters: &relay.Counters{}, PeerIdentity: "spiffe://cluster.local/ns/a/sa/b"}
	}

	deny := &ConnectionResult{Conn: conn(connmgr.Inbound), Labels: ConnLabels{Reporter: ReporterDestination, MutualTLS: true}}
	rec.Fail(deny, hbone.NewFlagError(http.StatusUnauthorized, FlagDeny, "RBAC: denied"))
	if deny.Labels.ResponseFlags != FlagDeny || total(t, m, "istio_tcp_connections_failed_total", FlagDeny) != 1 {
		t.Errorf("denied connection: flags %q, failed %v", deny.Labels.ResponseFlags, total(t, m, "istio_tcp_connections_failed_total", FlagDeny))
	}
	if !strings.Contains(buf.String(), `msg="connection failed" src.addr=10.0.0.1:5000 dst.addr=10.0.0.2:15008 direction=inbound`) {
		t.Errorf("failure line: %s", buf.String())
	}

	buf.Reset()
	done := &ConnectionResult{Conn: conn(connmgr.Inbound), Labels: ConnLabels{Reporter: ReporterDestination, ResponseFlags: FlagNone}}
	done.Conn.Counters.AToB.Add(7)
	rec.Complete(done, connmgr.ErrPolicyChanged)
	if done.Labels.ResponseFlags != FlagDeny || total(t, m, "istio_tcp_received_bytes_total", FlagDeny) != 7 {
		t.Errorf("policy close: flags %q", done.Labels.ResponseFlags)
	}
	if !strings.Contains(buf.String(), "level=ERROR") || !strings.Contains(buf.String(), "bytes_sent=7") ||
		!strings.Contains(buf.String(), "src.identity=spiffe://cluster.local/ns/a/sa/b") {
		t.Errorf("completion line: %s", buf.String())
	}

	buf.Reset()
	wp := &ConnectionResult{Conn: conn(connmgr.Inbound), Labels: ConnLabels{Reporter: ReporterWaypoint, ResponseFlags: FlagNone}}
	rec.Complete(wp, nil)
	if !strings.Contains(buf.String(), "dst.hbone_addr=10.0.0.2:80 upstream=10.0.0.2:15008 direction=waypoint") {
		t.Errorf("waypoint line: %s", buf.String())
	}
	buf.Reset()
	rec.Fail(&ConnectionResult{Conn: conn(connmgr.Inbound), Labels: ConnLabels{Reporter: ReporterWaypoint}},
		hbone.NewFlagError(http.StatusUnauthorized, FlagDeny, "denied by ns/p"))
	if !strings.Contains(buf.String(), `level=INFO msg="connection denied"`) || !strings.Contains(buf.String(), `reason="denied by ns/p"`) {
		t.Errorf("waypoint denial line: %s", buf.String())
	}
}

// total sums the series of a counter whose response_flags label is flag.
func total(t *testing.T, m *Metrics, name, flag string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "response_flags" && l.GetValue() == flag {
					sum += s.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// TestCompleteSeries: completions with one label set add to one series (served from the cache after the
// first), another label set gets its own, and past the cache's bound every count still lands where it belongs.
func TestCompleteSeries(t *testing.T) {
	m := New("test")
	rec := Recorder{Metrics: m, Log: slog.New(slog.DiscardHandler)}
	complete := func(flags string, dst *state.Workload, bytes int64) {
		c := &connmgr.Conn{Direction: connmgr.Outbound, Src: netip.MustParseAddrPort("10.0.0.1:5000"),
			Dst: netip.MustParseAddrPort("10.0.0.2:80"), Start: time.Now(), Counters: &relay.Counters{}}
		c.Counters.AToB.Add(bytes)
		rec.Complete(&ConnectionResult{Conn: c, Labels: ConnLabels{Reporter: ReporterSource, ResponseFlags: flags, Destination: dst}}, nil)
	}
	for range 3 {
		complete(FlagNone, nil, 10)
	}
	complete("UF", nil, 1)
	if got := total(t, m, "istio_tcp_connections_closed_total", FlagNone); got != 3 {
		t.Errorf("closed with flags -: %v, want 3", got)
	}
	if got := total(t, m, "istio_tcp_received_bytes_total", FlagNone); got != 30 {
		t.Errorf("received with flags -: %v, want 30", got)
	}
	if got := total(t, m, "istio_tcp_connections_opened_total", "UF"); got != 1 {
		t.Errorf("opened with flags UF: %v, want 1", got)
	}
	// More label sets than the cache holds (each workload object is its own key), twice over.
	dsts := make([]*state.Workload, 2*maxCachedSeries+7)
	for i := range dsts {
		dsts[i] = &state.Workload{Name: fmt.Sprintf("w%d", i), Namespace: "ns"}
	}
	for range 2 {
		for _, d := range dsts {
			complete("DC", d, 2)
		}
	}
	if got, want := total(t, m, "istio_tcp_connections_closed_total", "DC"), float64(2*len(dsts)); got != want {
		t.Errorf("closed with flags DC: %v, want %v", got, want)
	}
	if got, want := total(t, m, "istio_tcp_received_bytes_total", "DC"), float64(4*len(dsts)); got != want {
		t.Errorf("received with flags DC: %v, want %v", got, want)
	}
	if n := len(m.series.m); n > maxCachedSeries {
		t.Errorf("cache holds %d label sets, bound %d", n, maxCachedSeries)
	}
}

func BenchmarkComplete(b *testing.B) {
	m := New("test")
	rec := Recorder{Metrics: m, Log: slog.New(slog.DiscardHandler)}
	src := &state.Workload{Name: "client", Namespace: "a", ServiceAccount: "sa", CanonicalName: "client", CanonicalRevision: "v1"}
	dst := &state.Workload{Name: "server", Namespace: "b", ServiceAccount: "sb", CanonicalName: "server", CanonicalRevision: "v1"}
	c := &connmgr.Conn{Direction: connmgr.Outbound, Src: netip.MustParseAddrPort("10.0.0.1:5000"),
		Dst: netip.MustParseAddrPort("10.0.0.2:80"), Start: time.Now(), Counters: &relay.Counters{}}
	b.ReportAllocs()
	for b.Loop() {
		rec.Complete(&ConnectionResult{Conn: c, Labels: ConnLabels{Reporter: ReporterSource, Source: src, Destination: dst,
			SourcePrincipal: "spiffe://cluster.local/ns/a/sa/sa", DestPrincipal: "spiffe://cluster.local/ns/b/sa/sb",
			ResponseFlags: FlagNone, MutualTLS: true}}, nil)
	}
}
