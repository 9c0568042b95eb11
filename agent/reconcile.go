package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/redirect"
)

// reconcileLoop brings capture, certificates and live connections in line with the state after every
// change: local in-mesh pods are enrolled (and others unenrolled), their certificates are fetched
// ahead of the first connection, and connections that a policy change now denies are closed.
//
// changed is the state's change channel taken before the configuration source started, so that a first
// update applied before this loop runs (istiod's Address response while Authorization is still missing)
// is not missed: the pods it names are enrolled, and the proxies refuse their connections until policy
// arrives, instead of their traffic leaving uncaptured.
func (a *Agent) reconcileLoop(ctx context.Context, changed <-chan struct{}) error {
	for {
		var podsChanged <-chan struct{}
		if a.kube != nil {
			podsChanged = a.kube.Changed()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-podsChanged:
		}
		changed = a.Store.Changed() // before reconciling: a change during it is seen next round
		a.reconcile(ctx)
		if n := a.Conns.Recheck(); n > 0 {
			a.Metrics.PolicyCloses.Add(float64(n))
			a.log.Info("closed connections denied by a policy change", "count", n)
		}
	}
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

// kubeSynced reports whether the pod watch has its first complete listing.
func (a *Agent) kubeSynced() bool {
	select {
	case <-a.kube.Synced():
		return true
	default:
		return false
	}
}

// adoptCapture records the pods a previous agent process enrolled (kube enrollment), so that the first
// reconcile keeps those still wanted and releases the others.
func (a *Agent) adoptCapture(ctx context.Context) {
	pods, err := a.redir.Enrolled(ctx)
	if err != nil {
		a.log.Warn("list pods enrolled by a previous agent", "err", err)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range pods {
		if p.Name == "" {
			p.Name = p.UID
		}
		a.enrolled[p.UID] = p
	}
	if len(pods) > 0 {
		a.log.Info("re-adopted capture of a previous agent", "pods", len(pods))
	}
}

// wanted returns the pods to capture by capture UID, their identities, and (kube enrollment) the workload UID
// of each.
func (a *Agent) wanted() (map[string]redirect.Pod, map[spiffeid.ID]bool, map[string]string) {
	want := map[string]redirect.Pod{}
	ids := map[spiffeid.ID]bool{}
	if a.kube != nil {
		uids := map[string]string{}
		for _, p := range a.kube.Wanted() {
			key := captureUID(p.UID)
			want[key] = redirect.Pod{UID: key, Name: p.Namespace + "/" + p.Name, IPs: p.IPs}
			uids[key] = p.UID
			if id, err := spiffeid.FromString(p.Identity); err == nil {
				ids[id] = true
			}
		}
		return want, ids, uids
	}
	for _, w := range a.Store.WorkloadsOnNode(a.cfg.NodeName) {
		if !a.in.captured(w) {
			continue
		}
		want[captureUID(w.UID)] = redirect.Pod{UID: captureUID(w.UID), Name: w.Namespace + "/" + w.Name, IPs: w.Addresses}
		if id, err := spiffeid.FromString(w.Identity()); err == nil {
			ids[id] = true
		}
	}
	return want, ids, nil
}

func (a *Agent) reconcile(ctx context.Context) {
	if a.kube != nil && !a.kubeSynced() {
		return // an incomplete listing would release pods that are still wanted
	}
	want, ids, uids := a.wanted()
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
	if a.kube != nil {
		// Only pods whose capture is in place carry the redirection annotation istiod reads.
		var captured []string
		for key, uid := range uids {
			if _, ok := a.enrolled[key]; ok {
				captured = append(captured, uid)
			}
		}
		a.kube.SetCaptured(captured)
	}
}
