package waypoint_test

import (
	"github.com/ambit-mesh/ambit/test/meshlab"
)

// The lab harness shared with the agent tests (test/meshlab), under the names these tests use.
type (
	cluster    = meshlab.Cluster
	syncBuffer = meshlab.SyncBuffer
	testWriter = meshlab.TestWriter
)

var (
	startCluster = meshlab.StartCluster
	serve        = meshlab.Serve
	call         = meshlab.Call
	pod          = meshlab.Pod
)
