package kubelet

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// volumeFile is one file of a prepared volume.
type volumeFile struct {
	path  string
	data  []byte
	mode  os.FileMode // 0: the volume's defaultMode
	owner *int64      // the file's user (nil: root)
}

// defaultMode is the mode of a volume's files without one of their own (the API's default is 0644).
func defaultMode(m *int32) os.FileMode {
	if m == nil {
		return 0o644
	}
	return os.FileMode(*m)
}

// setOwnership gives a volume to fsGroup as the kubelet's SetVolumeOwnership does: every file and directory gets
// group fsGroup and group read (and write, unless the volume is read-only: configMap, secret, downwardAPI and
// projected volumes) permission, directories also the setgid bit so that new files inherit the group.
func setOwnership(dir string, fsGroup int64, readOnly bool) error {
	return filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, -1, int(fsGroup)); err != nil {
			return fmt.Errorf("fsGroup: %w", err)
		}
		if info.Mode()&os.ModeSymlink != 0 {
			return nil
		}
		mask := os.FileMode(0o660)
		if readOnly {
			mask = 0o440
		}
		mode := info.Mode() | mask
		if info.IsDir() {
			mask = 0o770
			if readOnly {
				mask = 0o550
			}
			mode = info.Mode() | mask | os.ModeSetgid
		}
		if err := os.Chmod(path, mode); err != nil {
			return fmt.Errorf("fsGroup: %w", err)
		}
		return nil
	})
}

// prepareVolumes materialises the pod's volumes under dir/<volume name> and returns the host directory of
// each volume. It fails (to be retried) while a referenced ConfigMap or Secret is missing.
func (k *Kubelet) prepareVolumes(ctx context.Context, pod *corev1.Pod, n *node, dir string, ad addrs) (map[string]string, error) {
	out := map[string]string{}
	var fsGroup *int64
	if pod.Spec.SecurityContext != nil {
		fsGroup = pod.Spec.SecurityContext.FSGroup
	}
	for _, v := range pod.Spec.Volumes {
		host := filepath.Join(dir, v.Name)
		var files []volumeFile
		var err error
		mode := os.FileMode(0o644)
		switch {
		case v.EmptyDir != nil:
			// The kubelet makes emptyDir volumes world-writable (0777), so that any container user can use them.
			if err := os.MkdirAll(host, 0o777); err != nil {
				return nil, err
			}
			if err := os.Chmod(host, 0o777); err != nil {
				return nil, err
			}
		case v.HostPath != nil:
			host, err = k.hostPath(n, v.HostPath.Path)
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			out[v.Name] = host
			continue
		case v.ConfigMap != nil:
			mode = defaultMode(v.ConfigMap.DefaultMode)
			files, err = k.configMapFiles(ctx, pod.Namespace, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
		case v.Secret != nil:
			mode = defaultMode(v.Secret.DefaultMode)
			files, err = k.secretFiles(ctx, pod.Namespace, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
		case v.DownwardAPI != nil:
			mode = defaultMode(v.DownwardAPI.DefaultMode)
			files, err = downwardFiles(pod, ad, v.DownwardAPI.Items)
		case v.Projected != nil:
			mode = defaultMode(v.Projected.DefaultMode)
			for _, src := range v.Projected.Sources {
				var fs []volumeFile
				switch {
				case src.ServiceAccountToken != nil:
					fs, err = k.tokenFile(ctx, pod, src.ServiceAccountToken, mode, fsGroup != nil)
				case src.ConfigMap != nil:
					fs, err = k.configMapFiles(ctx, pod.Namespace, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional)
				case src.Secret != nil:
					fs, err = k.secretFiles(ctx, pod.Namespace, src.Secret.Name, src.Secret.Items, src.Secret.Optional)
				case src.DownwardAPI != nil:
					fs, err = downwardFiles(pod, ad, src.DownwardAPI.Items)
				default:
					err = fmt.Errorf("unsupported projected source")
				}
				if err != nil {
					break
				}
				files = append(files, fs...)
			}
		default:
			err = fmt.Errorf("unsupported volume type")
		}
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if err := os.MkdirAll(host, 0o755); err != nil {
			return nil, err
		}
		for _, f := range files {
			p := filepath.Join(host, f.path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return nil, err
			}
			m := cmp.Or(f.mode, mode)
			if err := os.WriteFile(p, f.data, m); err != nil {
				return nil, err
			}
			if err := os.Chmod(p, m); err != nil {
				return nil, err
			}
			if f.owner != nil {
				if err := os.Chown(p, int(*f.owner), -1); err != nil {
					return nil, err
				}
			}
		}
		if fsGroup != nil {
			if err := setOwnership(host, *fsGroup, v.EmptyDir == nil); err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
		}
		out[v.Name] = host
	}
	return out, nil
}

// hostPath maps a hostPath volume to the node: /sys/fs/bpf is the node's own bpffs directory (so that each lab
// node keeps its own pinned capture state); /sys/fs/cgroup, /proc and /dev are the host's; any other path is a
// per-node directory.
func (k *Kubelet) hostPath(n *node, path string) (string, error) {
	switch p := filepath.Clean(path); {
	case p == "/sys/fs/bpf":
		if err := os.MkdirAll(n.lab.PinDir, 0o700); err != nil {
			return "", fmt.Errorf("node bpffs directory: %w", err)
		}
		return n.lab.PinDir, nil
	case p == "/sys/fs/cgroup" || p == "/proc" || p == "/dev" || strings.HasPrefix(p, "/sys/"):
		return p, nil
	default:
		d := filepath.Join(k.opts.Dir, "nodes", n.name, "hostpath", p)
		return d, os.MkdirAll(d, 0o755)
	}
}

func itemsOrAll[V any](data map[string]V, items []corev1.KeyToPath, conv func(V) []byte) []volumeFile {
	var out []volumeFile
	if len(items) == 0 {
		for k, v := range data {
			out = append(out, volumeFile{path: k, data: conv(v)})
		}
		return out
	}
	for _, it := range items {
		if v, ok := data[it.Key]; ok {
			var mode os.FileMode
			if it.Mode != nil {
				mode = os.FileMode(*it.Mode)
			}
			out = append(out, volumeFile{path: it.Path, data: conv(v), mode: mode})
		}
	}
	return out
}

func (k *Kubelet) configMapFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool) ([]volumeFile, error) {
	cm, err := k.opts.Client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return nil, nil
		}
		return nil, fmt.Errorf("configmap %s/%s: %w", ns, name, err)
	}
	files := itemsOrAll(cm.Data, items, func(s string) []byte { return []byte(s) })
	return append(files, itemsOrAll(cm.BinaryData, items, func(b []byte) []byte { return b })...), nil
}

func (k *Kubelet) secretFiles(ctx context.Context, ns, name string, items []corev1.KeyToPath, optional *bool) ([]volumeFile, error) {
	s, err := k.opts.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return nil, nil
		}
		return nil, fmt.Errorf("secret %s/%s: %w", ns, name, err)
	}
	return itemsOrAll(s.Data, items, func(b []byte) []byte { return b }), nil
}

// tokenFile requests a service-account token bound to the pod (TokenRequest API), as the kubelet does for
// projected serviceAccountToken sources. Its mode is the volume's (mode), or 0600 when the pod has an fsGroup
// or all its containers run as one user, who then owns the file (the kubelet's projected volume plugin).
func (k *Kubelet) tokenFile(ctx context.Context, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection, mode os.FileMode, hasFSGroup bool) ([]volumeFile, error) {
	sa := cmp.Or(pod.Spec.ServiceAccountName, "default")
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		ExpirationSeconds: src.ExpirationSeconds,
		BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := k.opts.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for %s/%s: %w", pod.Namespace, sa, err)
	}
	owner := fsUser(pod)
	if owner != nil || hasFSGroup {
		mode = 0o600
	}
	return []volumeFile{{path: src.Path, data: []byte(tr.Status.Token), mode: mode, owner: owner}}, nil
}

func downwardFiles(pod *corev1.Pod, ad addrs, items []corev1.DownwardAPIVolumeFile) ([]volumeFile, error) {
	var out []volumeFile
	for _, it := range items {
		if it.FieldRef == nil {
			continue // resourceFieldRef: no resources here
		}
		v, err := fieldValue(pod, ad, it.FieldRef.FieldPath)
		if err != nil {
			return nil, err
		}
		out = append(out, volumeFile{path: it.Path, data: []byte(v)})
	}
	return out, nil
}

// addrs are a pod's addresses, known before its status says them.
type addrs struct{ podIP, hostIP string }

// fieldValue resolves a downward API field path of pod.
func fieldValue(pod *corev1.Pod, ad addrs, path string) (string, error) {
	mapValue := func(m map[string]string, prefix string) (string, bool) {
		if !strings.HasPrefix(path, prefix+"['") || !strings.HasSuffix(path, "']") {
			return "", false
		}
		return m[path[len(prefix)+2:len(path)-2]], true
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		return ad.podIP, nil
	case "status.hostIP", "status.hostIPs":
		return ad.hostIP, nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	}
	if v, ok := mapValue(pod.Labels, "metadata.labels"); ok {
		return v, nil
	}
	if v, ok := mapValue(pod.Annotations, "metadata.annotations"); ok {
		return v, nil
	}
	return "", fmt.Errorf("unsupported field path %q", path)
}

func formatMap(m map[string]string) string {
	var lines []string
	for k, v := range m {
		lines = append(lines, fmt.Sprintf("%s=%q", k, v))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
