package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
)

// ReporterWaypoint is the reporter label of the connections a waypoint forwards at L4, ReporterGateway
// that of the streams an east-west gateway relays (package eastwest). Both get the waypoint's log line.
const (
	ReporterWaypoint = "waypoint"
	ReporterGateway  = "gateway"
)

// ConnectionResult is one proxied connection as telemetry sees it (after ztunnel's ConnectionResult):
// the tracked connection and its metric labels, built once when the connection is accepted and recorded
// once, by Recorder.Fail when it could not be established or Recorder.Complete when it ended. The
// metrics and the access-log line are written from these same values, so they always agree.
type ConnectionResult struct {
	Conn   *connmgr.Conn
	Labels ConnLabels
}

// FlagFor returns the response flag of a connection that could not be established because of err: the
// flag an *hbone.FlagError in the chain carries, DENY when the peer refused the stream with 401 (its
// authorization denied it), CONNECT for any other failure, and "-" for nil. This is the only place the
// deny/connect decision is made.
func FlagFor(err error) string {
	if err == nil {
		return FlagNone
	}
	var fe *hbone.FlagError
	if errors.As(err, &fe) && fe.Flag != "" {
		return fe.Flag
	}
	var se *hbone.StatusError
	if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
		return FlagDeny
	}
	return FlagConnect
}

// Recorder writes ConnectionResults as Istio's TCP metrics and one access-log line per connection.
// The agent's lines follow ztunnel's access log; the waypoint's (Labels.Reporter ReporterWaypoint)
// name the CONNECT authority and the upstream it forwarded to.
type Recorder struct {
	Metrics *Metrics
	Log     *slog.Logger
}

// Fail accounts a connection that was never established: its response flag is FlagFor(err), it is
// counted in istio_tcp_connections_failed_total, and logged.
func (r Recorder) Fail(res *ConnectionResult, err error) {
	res.Labels.ResponseFlags = FlagFor(err)
	r.Metrics.Failed.WithLabelValues(res.Labels.Values()...).Inc()
	c := res.Conn
	if res.Labels.Reporter == ReporterWaypoint || res.Labels.Reporter == ReporterGateway {
		var fe *hbone.FlagError
		if res.Labels.ResponseFlags == FlagDeny && errors.As(err, &fe) {
			r.Log.Info("connection denied", "src.addr", c.Src, "src.identity", c.PeerIdentity, "dst.hbone_addr", c.Dst,
				"reason", fe.Err.Error())
			return
		}
		r.Log.Warn("connection failed", "src.addr", c.Src, "dst.addr", c.Dst, "error", err.Error())
		return
	}
	r.Log.LogAttrs(context.Background(), slog.LevelWarn, "connection failed",
		slog.String("src.addr", c.Src.String()), slog.String("dst.addr", hopString(c)),
		slog.String("direction", string(c.Direction)), slog.String("error", err.Error()))
}

// Complete accounts an established connection once it ended; err is how it ended (nil when both sides
// finished). A connection closed because a policy change denies it gets the DENY flag.
func (r Recorder) Complete(res *ConnectionResult, err error) {
	if errors.Is(err, connmgr.ErrPolicyChanged) {
		res.Labels.ResponseFlags = FlagDeny
	}
	c, cnt := res.Conn, res.Conn.Counters
	s := r.Metrics.tcp(&res.Labels)
	s.opened.Inc()
	s.closed.Inc()
	// Istio's convention: received = bytes from the client (downstream), sent = bytes to it.
	s.received.Add(float64(cnt.AToB.Load()))
	s.sent.Add(float64(cnt.BToA.Load()))
	if res.Labels.Reporter == ReporterWaypoint || res.Labels.Reporter == ReporterGateway {
		r.waypointLine(c, res.Labels.Reporter, err)
		return
	}
	r.accessLog(c, err)
}

func (r Recorder) waypointLine(c *connmgr.Conn, reporter string, err error) {
	cnt := c.Counters
	attrs := []any{"src.addr", c.Src, "src.identity", c.PeerIdentity, "dst.addr", c.Dst, "dst.hbone_addr", c.Authority,
		"upstream", c.Hop, "direction", reporter, "bytes_sent", cnt.AToB.Load(), "bytes_recv", cnt.BToA.Load(),
		"duration", time.Since(c.Start)}
	if c.Service != nil {
		attrs = append(attrs, "dst.service", c.Service.Hostname)
	}
	if err != nil {
		r.Log.Error("connection complete", append(attrs, "error", err.Error())...)
		return
	}
	r.Log.Info("connection complete", attrs...)
}

func hopString(c *connmgr.Conn) string {
	if c.Hop.IsValid() {
		return c.Hop.String()
	}
	return c.Dst.String()
}

// accessLog writes ztunnel's "connection complete" line, with the route taken.
func (r Recorder) accessLog(c *connmgr.Conn, err error) {
	cnt := c.Counters
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
	r.Log.LogAttrs(context.Background(), level, "connection complete", attrs...)
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
