// Package routing selects the route rule for an HTTP request among the HTTPRoutes, GRPCRoutes and
// VirtualServices attached to a destination, with Gateway API precedence (exact path, then longest
// prefix, then regular expression; then method, most header matches, most query matches; then route
// and rule order), and picks a weighted backend. It is pure: no I/O; it imports only waypoint/model.
package routing
