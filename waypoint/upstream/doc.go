// Package upstream keeps the L7 waypoint's per-destination state: load balancing (round robin, least
// request, random, consistent hash), circuit breaking (DestinationRule connection pool limits) and
// outlier detection (ejection after consecutive errors). Clusters survive configuration reloads, so
// counters and ejections are not reset by an unrelated change. Time is passed in.
package upstream
