package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/agent/state"
	"github.com/ambit-mesh/ambit/redirect"
)

// reconcileLoop brings capture, certificates and live connections in line with the state after every
// change: local in-mesh pods are enrolled (and others unenrolled), their certificates are fetched
// ahead of the first connection, and connections that a policy change now denies are closed.
func (a *Agent) reconcileLoop(ctx context.Context) error {
	for {
		changed := a.Store.Changed()
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		a.reconcile(ctx)
		if n := a.Conns.Recheck(); n > 0 {
			a.Metrics.PolicyCloses.Add(float64(n))
			a.log.Info("closed connections denied by a policy change", "count", n)
		}
	}
}

// captured reports whether the agent captures w: an HBONE workload on this node with its own IPs.
func (a *Agent) captured(w *state.Workload) bool {
	return w.Node == a.cfg.NodeName && w.Protocol == state.TunnelHBONE && !w.NativeTunnel &&
		w.NetworkMode == state.NetworkStandard && len(w.Addresses) > 0
}

// captureUID is the key a workload is enrolled under: its UID when capture accepts it, else a hash.
func captureUID(uid string) string {
	ok := len(uid) <= redirect.MaxUIDLen
	for i := 0; ok && i < len(uid); i++ {
		c := uid[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':' || c == '/'
	}
	if ok {
		return uid
	}
	sum := sha256.Sum256([]byte(uid))
	return "h:" + hex.EncodeToString(sum[:24])
}

func (a *Agent) reconcile(ctx context.Context) {
	want := map[string]redirect.Pod{}
	ids := map[spiffeid.ID]bool{}
	for _, w := range a.Store.WorkloadsOnNode(a.cfg.NodeName) {
		if !a.captured(w) {
			continue
		}
		want[captureUID(w.UID)] = redirect.Pod{UID: captureUID(w.UID), Name: w.Namespace + "/" + w.Name, IPs: w.Addresses}
		if id, err := spiffeid.FromString(w.Identity()); err == nil {
			ids[id] = true
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range ids {
		if !a.certIDs[id] {
			a.certs.Prefetch(id)
		}
	}
	for id := range a.certIDs {
		if !ids[id] {
			a.certs.Forget(id)
		}
	}
	a.certIDs = ids
	for uid, pod := range a.enrolled {
		if _, keep := want[uid]; keep {
			continue
		}
		if a.redir != nil {
			if err := a.redir.Unenroll(ctx, uid); err != nil {
				a.log.Warn("unenroll", "pod", pod.Name, "err", err)
				continue
			}
		}
		delete(a.enrolled, uid)
		a.log.Info("pod left the mesh", "pod", pod.Name)
	}
	for uid, pod := range want {
		if old, ok := a.enrolled[uid]; ok && slices.Equal(old.IPs, pod.IPs) {
			continue
		}
		if a.redir != nil {
			if err := a.redir.Enroll(ctx, pod); err != nil {
				a.log.Warn("enroll", "pod", pod.Name, "err", err)
				continue
			}
		}
		a.enrolled[uid] = pod
		a.log.Info("pod captured", "pod", pod.Name, "ips", pod.IPs)
	}
	a.Metrics.EnrolledPods.Set(float64(len(a.enrolled)))
}
