package agent_test

import (
	"github.com/ambit-mesh/ambit/test/meshlab"
)

// The lab harness shared with the waypoint tests (test/meshlab), under the names these tests use.
var (
	startCluster = meshlab.StartCluster
	serve        = meshlab.Serve
	call         = meshlab.Call
	meshYAML     = meshlab.MeshYAML
	counter      = meshlab.Counter
)
