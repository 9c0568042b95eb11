package agent

import (
	"context"
	"log/slog"
	"time"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/proxy/relay"
)

// record accounts one finished connection: Istio's TCP metrics with reporter source (outbound) or
// destination (inbound), and one access-log line, as ztunnel writes at completion.
func (a *Agent) record(c *connmgr.Conn, lbl *metrics.ConnLabels, cnt *relay.Counters, err error) {
	vals := lbl.Values()
	m := a.Metrics
	m.Opened.WithLabelValues(vals...).Inc()
	m.Closed.WithLabelValues(vals...).Inc()
	// Istio's convention: received = bytes from the client (downstream), sent = bytes to it.
	m.Received.WithLabelValues(vals...).Add(float64(cnt.AToB.Load()))
	m.Sent.WithLabelValues(vals...).Add(float64(cnt.BToA.Load()))
	a.accessLog(c, cnt, err)
}

// recordFailure accounts a connection that never got established.
func (a *Agent) recordFailure(c *connmgr.Conn, lbl *metrics.ConnLabels, err error) {
	a.Metrics.Failed.WithLabelValues(lbl.Values()...).Inc()
	a.log.LogAttrs(context.Background(), slog.LevelWarn, "connection failed",
		slog.String("src.addr", c.Src.String()), slog.String("dst.addr", hopString(c)),
		slog.String("direction", string(c.Direction)), slog.String("error", err.Error()))
}

func hopString(c *connmgr.Conn) string {
	if c.Hop.IsValid() {
		return c.Hop.String()
	}
	return c.Dst.String()
}

// accessLog writes ztunnel's "connection complete" line, with the route taken.
func (a *Agent) accessLog(c *connmgr.Conn, cnt *relay.Counters, err error) {
	attrs := make([]slog.Attr, 0, 16)
	attrs = append(attrs, slog.String("src.addr", c.Src.String()))
	if w := srcWorkload(c); w != nil {
		attrs = append(attrs, slog.String("src.workload", w.Name), slog.String("src.namespace", w.Namespace))
	}
	if c.Direction == connmgr.Inbound && c.PeerIdentity != "" {
		attrs = append(attrs, slog.String("src.identity", c.PeerIdentity))
	}
	attrs = append(attrs, slog.String("dst.addr", hopString(c)))
	if c.Authority != "" {
		attrs = append(attrs, slog.String("dst.hbone_addr", c.Authority))
	}
	if c.Service != nil {
		attrs = append(attrs, slog.String("dst.service", c.Service.Hostname))
	}
	if w := dstWorkload(c); w != nil {
		attrs = append(attrs, slog.String("dst.workload", w.Name), slog.String("dst.namespace", w.Namespace))
	}
	if c.Waypoint != "" {
		attrs = append(attrs, slog.String("waypoint", c.Waypoint))
	}
	attrs = append(attrs,
		slog.String("direction", string(c.Direction)),
		slog.String("protocol", c.Protocol),
		slog.Int64("bytes_sent", cnt.AToB.Load()),
		slog.Int64("bytes_recv", cnt.BToA.Load()),
		slog.Duration("duration", time.Since(c.Start)),
	)
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelError
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	a.log.LogAttrs(context.Background(), level, "connection complete", attrs...)
}

// srcWorkload and dstWorkload orient a tracked connection: its local workload is the source of an
// outbound connection and the destination of an inbound one.
func srcWorkload(c *connmgr.Conn) *state.Workload {
	if c.Direction == connmgr.Outbound {
		return c.Workload
	}
	return c.Peer
}

func dstWorkload(c *connmgr.Conn) *state.Workload {
	if c.Direction == connmgr.Outbound {
		return c.Peer
	}
	return c.Workload
}
