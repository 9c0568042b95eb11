package local

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	networkingapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/ambit-mesh/ambit/config/resource"
	"github.com/ambit-mesh/ambit/mesh/binding"
	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// validIdentity checks that w's identity (trust domain, namespace, service account) is a valid SPIFFE
// ID. A workload whose identity does not parse could never be verified as a peer: accepting it would
// leave the agents and the waypoint with no identity to expect of it.
func validIdentity(w *state.Workload) error {
	id := state.SPIFFEID(w.TrustDomain, w.Namespace, w.ServiceAccount)
	if _, err := spiffeid.FromString(id); err != nil {
		return fmt.Errorf("invalid identity %q: %w", id, err)
	}
	return nil
}

func validatePod(p *corev1.Pod) error {
	if p.Status.PodIP != "" {
		if _, err := parseIP("status.podIP", p.Status.PodIP); err != nil {
			return err
		}
	}
	for i, ip := range p.Status.PodIPs {
		if _, err := parseIP(fmt.Sprintf("status.podIPs[%d]", i), ip.IP); err != nil {
			return err
		}
	}
	for ci, ctr := range p.Spec.Containers {
		for pi, port := range ctr.Ports {
			if err := validPort(fmt.Sprintf("spec.containers[%d].ports[%d]", ci, pi), int64(port.ContainerPort)); err != nil {
				return err
			}
		}
	}
	return nil
}

// tunnelProtocol applies istiod's setTunnelProtocol (redirection annotation, or a tunnel label naming
// http for native HBONE), plus, in a local file where no CNI annotates pods, the enrollment selector.
func tunnelProtocol(w *state.Workload, lbls, annotations map[string]string, enrolled bool) {
	if annotations[istio.AnnotationRedirection] == istio.RedirectionEnabled || enrolled {
		w.Protocol = state.TunnelHBONE
	}
	if slices.Contains(strings.Split(lbls[istio.LabelTunnel], ","), "http") {
		w.Protocol = state.TunnelHBONE
		w.NativeTunnel = true
	}
}

// canonicalService derives the canonical service name and revision as Istio does.
func canonicalService(lbls map[string]string, workloadName string) (string, string) {
	name := cmp.Or(lbls[istio.LabelCanonicalName], lbls["app.kubernetes.io/name"], lbls["app"], workloadName)
	rev := cmp.Or(lbls[istio.LabelCanonicalRevision], lbls["app.kubernetes.io/version"], lbls["version"], "latest")
	return name, rev
}

// podWorkloadName derives the owning workload's name: a Deployment from its ReplicaSet (pod-template-hash
// suffix stripped), a CronJob from its Job, else the controller's name, else the pod's.
func podWorkloadName(p *corev1.Pod) (string, state.WorkloadType) {
	for _, ref := range p.OwnerReferences {
		if ref.Controller == nil || !*ref.Controller {
			continue
		}
		switch ref.Kind {
		case "ReplicaSet":
			if h := p.Labels["pod-template-hash"]; h != "" && strings.HasSuffix(ref.Name, "-"+h) {
				return strings.TrimSuffix(ref.Name, "-"+h), state.WorkloadDeployment
			}
		case "Job":
			if i := strings.LastIndexByte(ref.Name, '-'); i > 0 {
				if _, err := fmt.Sscanf(ref.Name[i+1:], "%d", new(int)); err == nil {
					return ref.Name[:i], state.WorkloadCronJob
				}
			}
			return ref.Name, state.WorkloadJob
		}
		return ref.Name, state.WorkloadPod
	}
	return p.Name, state.WorkloadPod
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	// A hand-written local file has no kubelet to report readiness: a pod without a Ready condition is
	// taken as ready (istiod would treat it as unhealthy).
	return true
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	if len(p.Status.PodIPs) == 0 && p.Status.PodIP != "" {
		a, _ := netip.ParseAddr(p.Status.PodIP)
		return []netip.Addr{a.Unmap()}
	}
	for _, ip := range p.Status.PodIPs {
		a, _ := netip.ParseAddr(ip.IP)
		out = append(out, a.Unmap())
	}
	return out
}

// bindWorkload resolves the workload waypoint for an object with meta m (R2, R4–R7).
func (c *compiler) bindWorkload(m metav1.ObjectMeta) (binding.Result, *binding.Waypoint) {
	return binding.ForWorkload(c, binding.Object{Namespace: m.Namespace, Name: m.Name, Labels: m.Labels})
}

func (c *compiler) buildPodWorkloads() error {
	for _, p := range c.objs.Pods {
		res, _ := c.bindWorkload(p.ObjectMeta)
		b := Binding{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, seq: c.seq(p)}
		if res.Waypoint != nil {
			b.Waypoint = res.Waypoint.Key()
		}
		c.res.Bindings = append(c.res.Bindings, b)

		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		ips := podIPs(p)
		if len(ips) == 0 {
			continue
		}
		w := &state.Workload{
			UID:         c.opts.ClusterID + "//Pod/" + p.Namespace + "/" + p.Name,
			Name:        p.Name,
			Namespace:   p.Namespace,
			Addresses:   ips,
			Network:     c.networkOf(p.Namespace, p.Labels),
			TrustDomain: c.opts.TrustDomain,
			// An empty service account is the namespace's default one.
			ServiceAccount: cmp.Or(p.Spec.ServiceAccountName, state.DefaultServiceAccount),
			Node:           p.Spec.NodeName,
			ClusterID:      c.opts.ClusterID,
			Locality:       c.nodes[p.Spec.NodeName],
			Status:         state.Healthy,
		}
		if res.Waypoint != nil {
			w.Waypoint = res.Waypoint.Address
		}
		w.NetworkGateway = c.netGateways[w.Network]
		if !podReady(p) || p.DeletionTimestamp != nil {
			w.Status = state.Unhealthy
		}
		if p.Spec.HostNetwork {
			w.NetworkMode = state.NetworkHost
		}
		w.WorkloadName, w.WorkloadType = podWorkloadName(p)
		w.WorkloadType = state.WorkloadPod // istiod always sends POD, for compatibility
		w.CanonicalName, w.CanonicalRevision = canonicalService(p.Labels, w.WorkloadName)
		tunnelProtocol(w, p.Labels, p.Annotations, istio.Enrolled(p.Labels, c.namespaces[p.Namespace], p.Spec.HostNetwork))
		for _, info := range c.svcInfos[p.Namespace] {
			if !selects(info.selector, p.Labels) {
				continue
			}
			w.Services = append(w.Services, state.ServiceRef{Service: info.svc.Key(), Ports: podPorts(p, info)})
		}
		w.AuthorizationPolicies = c.workloadPolicies(p.Namespace, p.Labels)
		if err := validIdentity(w); err != nil {
			return c.inputErr(p, "Pod", &p.ObjectMeta, fmt.Errorf("spec.serviceAccountName: %w", err))
		}
		c.res.Snapshot.Workloads = append(c.res.Snapshot.Workloads, w)
	}
	return nil
}

// podPorts resolves a service's ports for one pod (constructServices): named target ports are looked up
// in the pod's container ports and left out when the pod does not declare them.
func podPorts(p *corev1.Pod, info *svcInfo) []state.PortMapping {
	out := make([]state.PortMapping, 0, len(info.svc.Ports))
	for _, port := range info.svc.Ports {
		target := port.TargetPort
		if named, ok := info.portNames[port.ServicePort]; ok {
			switch {
			case named.TargetPortName != "":
				tp, ok := containerPort(p, named.TargetPortName)
				if !ok {
					continue
				}
				target = tp
			case info.kind == "ServiceEntry" && named.PortName != "":
				if tp, ok := containerPort(p, named.PortName); ok {
					target = tp
				} else if target == 0 {
					target = port.ServicePort
				}
			}
		}
		out = append(out, state.PortMapping{ServicePort: port.ServicePort, TargetPort: target})
	}
	return out
}

func containerPort(p *corev1.Pod, name string) (uint16, bool) {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == name && (port.Protocol == "" || port.Protocol == corev1.ProtocolTCP) {
				return uint16(port.ContainerPort), true
			}
		}
	}
	return 0, false
}

// entryPorts resolves a service's ports for a WorkloadEntry or ServiceEntry endpoint
// (constructServicesFromWorkloadEntry), using the entry's named ports.
func entryPorts(named map[string]uint32, info *svcInfo) []state.PortMapping {
	out := make([]state.PortMapping, 0, len(info.svc.Ports))
	for _, port := range info.svc.Ports {
		target := port.TargetPort
		if pn, ok := info.portNames[port.ServicePort]; ok {
			if info.kind == "Service" {
				if pn.TargetPortName != "" {
					tv, ok := named[pn.TargetPortName]
					if !ok {
						continue
					}
					target = uint16(tv)
				} else if tv, ok := named[pn.PortName]; ok {
					target = uint16(tv)
				}
			} else if tv, ok := named[pn.PortName]; ok {
				target = uint16(tv)
			} else if target == 0 {
				target = port.ServicePort
			}
		}
		out = append(out, state.PortMapping{ServicePort: port.ServicePort, TargetPort: target})
	}
	return out
}

func (c *compiler) buildWorkloadEntries() error {
	for _, we := range c.objs.WorkloadEntries {
		if err := resource.ValidateMeta(&we.ObjectMeta, true); err != nil {
			return c.inputErr(we, "WorkloadEntry", &we.ObjectMeta, err)
		}
		if err := resource.ValidateLabels(we.Spec.Labels, "spec", "labels"); err != nil {
			return c.inputErr(we, "WorkloadEntry", &we.ObjectMeta, err)
		}
		if err := c.convertWorkloadEntry(we); err != nil {
			return c.inputErr(we, "WorkloadEntry", &we.ObjectMeta, err)
		}
	}
	return nil
}

func (c *compiler) convertWorkloadEntry(we *networkingv1.WorkloadEntry) error {
	spec := &we.Spec
	// Labels may sit in metadata and in spec; metadata wins (ConvertClientWorkloadEntry).
	lbls := make(map[string]string, len(spec.Labels)+len(we.Labels))
	for k, v := range spec.Labels {
		lbls[k] = v
	}
	for k, v := range we.Labels {
		lbls[k] = v
	}
	meta := we.ObjectMeta
	meta.Labels = lbls
	res, _ := c.bindWorkload(meta)
	b := Binding{Kind: "WorkloadEntry", Namespace: we.Namespace, Name: we.Name,
		Condition: binding.WorkloadEntryCondition(res), seq: c.seq(we)}
	if res.Waypoint != nil {
		b.Waypoint = res.Waypoint.Key()
	}
	c.res.Bindings = append(c.res.Bindings, b)
	if spec.Address == "" {
		return nil // no address: nothing to send, but the binding and its status still exist
	}
	for name, tp := range spec.Ports {
		if err := validPort("spec.ports["+name+"]", int64(tp)); err != nil {
			return err
		}
	}
	w := &state.Workload{
		UID:            c.opts.ClusterID + "/networking.istio.io/WorkloadEntry/" + we.Namespace + "/" + we.Name,
		Name:           we.Name,
		Namespace:      we.Namespace,
		Network:        cmp.Or(spec.Network, c.networkOf(we.Namespace, lbls)),
		TrustDomain:    c.opts.TrustDomain,
		ServiceAccount: spec.ServiceAccount,
		ClusterID:      c.opts.ClusterID,
		Capacity:       spec.Weight,
		Locality:       splitLocality(spec.Locality),
		WorkloadType:   state.WorkloadPod,
	}
	if err := setEntryAddress(w, spec.Address); err != nil {
		return err
	}
	if err := validIdentity(w); err != nil {
		return fmt.Errorf("spec.serviceAccount: %w", err)
	}
	if res.Waypoint != nil {
		w.Waypoint = res.Waypoint.Address
	}
	w.NetworkGateway = c.netGateways[w.Network]
	w.WorkloadName = cmp.Or(we.Annotations[istio.AnnotationAutoRegistration], lbls[istio.LabelWorkloadName], we.Name)
	w.CanonicalName, w.CanonicalRevision = canonicalService(lbls, w.WorkloadName)
	tunnelProtocol(w, lbls, we.Annotations, false)
	for _, info := range c.svcInfos[we.Namespace] {
		if selects(info.selector, lbls) {
			w.Services = append(w.Services, state.ServiceRef{Service: info.svc.Key(), Ports: entryPorts(spec.Ports, info)})
		}
	}
	w.AuthorizationPolicies = c.workloadPolicies(we.Namespace, lbls)
	c.res.Snapshot.Workloads = append(c.res.Snapshot.Workloads, w)
	return nil
}

func setEntryAddress(w *state.Workload, addr string) error {
	if strings.HasPrefix(addr, "unix://") {
		return fmt.Errorf("address %q: unix domain sockets are not supported", addr)
	}
	if ip, err := netip.ParseAddr(addr); err == nil {
		w.Addresses = []netip.Addr{ip.Unmap()}
		return nil
	}
	w.Hostname = addr
	return nil
}

func splitLocality(l string) state.Locality {
	parts := strings.SplitN(l, "/", 3)
	var loc state.Locality
	if len(parts) > 0 {
		loc.Region = parts[0]
	}
	if len(parts) > 1 {
		loc.Zone = parts[1]
	}
	if len(parts) > 2 {
		loc.Subzone = parts[2]
	}
	return loc
}

// buildServiceEntryWorkloads turns inline ServiceEntry endpoints (or, for DNS entries without endpoints
// or selector, one implicit endpoint per host) into workloads.
func (c *compiler) buildServiceEntryWorkloads() error {
	for _, se := range c.objs.ServiceEntries {
		spec := &se.Spec
		svcs := c.seServices[se]
		implicit := len(spec.Endpoints) == 0 && spec.WorkloadSelector == nil &&
			(spec.Resolution == networkingapi.ServiceEntry_DNS || spec.Resolution == networkingapi.ServiceEntry_DNS_ROUND_ROBIN ||
				spec.Resolution == networkingapi.ServiceEntry_DYNAMIC_DNS)
		eps := spec.Endpoints
		if implicit {
			eps = nil
			for _, svc := range svcs {
				eps = append(eps, &networkingapi.WorkloadEntry{Address: svc.Hostname})
			}
		}
		infos := make([]*svcInfo, 0, len(svcs))
		for _, info := range c.svcInfos[se.Namespace] {
			if slices.Contains(svcs, info.svc) {
				infos = append(infos, info)
			}
		}
		for i, ep := range eps {
			if ep.Address == "" {
				continue
			}
			w := &state.Workload{
				UID:            c.opts.ClusterID + "/networking.istio.io/ServiceEntry/" + se.Namespace + "/" + se.Name + "/" + ep.Address,
				Name:           se.Name,
				Namespace:      se.Namespace,
				Network:        cmp.Or(ep.Network, c.networkOf(se.Namespace, ep.Labels)),
				TrustDomain:    c.opts.TrustDomain,
				ServiceAccount: ep.ServiceAccount,
				ClusterID:      c.opts.ClusterID,
				Capacity:       ep.Weight,
				Locality:       splitLocality(ep.Locality),
				WorkloadName:   se.Name,
				WorkloadType:   state.WorkloadPod,
			}
			w.NetworkGateway = c.netGateways[w.Network]
			if err := setEntryAddress(w, ep.Address); err != nil {
				return c.inputErr(se, "ServiceEntry", &se.ObjectMeta, fmt.Errorf("spec.endpoints[%d]: %w", i, err))
			}
			if err := validIdentity(w); err != nil {
				return c.inputErr(se, "ServiceEntry", &se.ObjectMeta, fmt.Errorf("spec.endpoints[%d].serviceAccount: %w", i, err))
			}
			if !implicit {
				res, _ := c.bindWorkload(metav1.ObjectMeta{Namespace: se.Namespace, Name: se.Name, Labels: ep.Labels})
				if res.Waypoint != nil {
					w.Waypoint = res.Waypoint.Address
				}
			}
			w.CanonicalName, w.CanonicalRevision = canonicalService(se.Labels, w.WorkloadName)
			tunnelProtocol(w, se.Labels, se.Annotations, false)
			use := infos
			if implicit {
				use = infos[i : i+1]
			}
			for _, info := range use {
				w.Services = append(w.Services, state.ServiceRef{Service: info.svc.Key(), Ports: entryPorts(ep.Ports, info)})
			}
			w.AuthorizationPolicies = c.workloadPolicies(se.Namespace, se.Labels)
			c.res.Snapshot.Workloads = append(c.res.Snapshot.Workloads, w)
		}
	}
	return nil
}
