package xdsclient

import (
	"cmp"
	"fmt"
	"maps"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// Defaults of NodeInfo, as ztunnel applies them.
const (
	DefaultInstanceIP = "1.1.1.1"
	DefaultClusterID  = "Kubernetes"
)

// NodeInfo describes the node proxy to istiod, the way ztunnel does (ztunnel-protocols.md 3.2). istiod uses
// NodeName to find the workloads on this node (on-demand pushes, certificate impersonation) and ClusterID for
// its cluster context; with its XDS identity check on, PodNamespace (and ServiceAccount, if set) must match
// the bearer token's.
type NodeInfo struct {
	// IP is the proxy pod's IP (INSTANCE_IP; default DefaultInstanceIP).
	IP string
	// PodName and PodNamespace name the proxy's pod (POD_NAME, POD_NAMESPACE). Required.
	PodName      string
	PodNamespace string
	// NodeName is the Kubernetes node the proxy serves (NODE_NAME).
	NodeName string
	// ClusterID is sent as metadata CLUSTER_ID unless Metadata sets it (default DefaultClusterID).
	ClusterID string
	// ServiceAccount, when set, is sent as metadata SERVICE_ACCOUNT.
	ServiceAccount string
	// Metadata holds further node metadata (ztunnel's ISTIO_META_<K> and ISTIO_METAJSON_<K>): strings, or any
	// value structpb.NewValue accepts (numbers, bools, []any, map[string]any). It overrides nothing above
	// except CLUSTER_ID.
	Metadata map[string]any
}

// ID returns the node id istiod parses: ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local. The
// suffix is literal; istiod only splits on "~" and checks the "ztunnel" type.
func (n NodeInfo) ID() string {
	ip := cmp.Or(n.IP, DefaultInstanceIP)
	return "ztunnel~" + ip + "~" + n.PodName + "." + n.PodNamespace + "~" + n.PodNamespace + ".svc.cluster.local"
}

// Proto returns the envoy Node sent on the initial request of every type.
func (n NodeInfo) Proto() (*corev3.Node, error) {
	if n.PodName == "" || n.PodNamespace == "" {
		return nil, fmt.Errorf("build node: pod name and namespace are required")
	}
	fields := make(map[string]*structpb.Value, len(n.Metadata)+6)
	for _, k := range slices.Sorted(maps.Keys(n.Metadata)) {
		v, err := structpb.NewValue(n.Metadata[k])
		if err != nil {
			return nil, fmt.Errorf("build node: metadata %s: %w", k, err)
		}
		fields[k] = v
	}
	if _, ok := fields["CLUSTER_ID"]; !ok {
		fields["CLUSTER_ID"] = structpb.NewStringValue(cmp.Or(n.ClusterID, DefaultClusterID))
	}
	fields["NAME"] = structpb.NewStringValue(n.PodName)
	fields["NAMESPACE"] = structpb.NewStringValue(n.PodNamespace)
	fields["INSTANCE_IPS"] = structpb.NewStringValue(cmp.Or(n.IP, DefaultInstanceIP))
	fields["NODE_NAME"] = structpb.NewStringValue(n.NodeName)
	if n.ServiceAccount != "" {
		fields["SERVICE_ACCOUNT"] = structpb.NewStringValue(n.ServiceAccount)
	}
	return &corev3.Node{Id: n.ID(), Metadata: &structpb.Struct{Fields: fields}}, nil
}
