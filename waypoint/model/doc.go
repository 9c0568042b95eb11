// Package model is the L7 waypoint's configuration model: routes, destination policies, authorization,
// JWT authentication and rate limits, compiled from Gateway API and Istio resources (waypoint/compile)
// and executed by the L7 engine (waypoint/engine). It is plain data plus pure matching helpers; it does no I/O
// and imports no other Ambit package.
//
// A Config is immutable once built; the engine swaps whole Configs, so a request sees one version from
// start to end.
package model
