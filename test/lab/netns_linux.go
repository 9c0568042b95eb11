package lab

import "github.com/ambit-mesh/ambit/test/netns"

// NS is a named network namespace created by a lab (package test/netns, iproute2's conventions).
type NS = netns.NS
