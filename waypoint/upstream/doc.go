// Package upstream chooses where the L7 waypoint sends a request: the endpoints of a backend
// (Endpoints: healthy, in the DestinationRule subset, at the target port) and its per-destination state:
// load balancing (round robin, least request, random, consistent hash), circuit breaking
// (DestinationRule connection pool limits) and outlier detection (ejection after consecutive errors).
// Clusters survive configuration reloads, so counters and ejections are not reset by an unrelated
// change.
//
// It is pure (time is passed in) and imports only mesh/state and waypoint/model.
package upstream
