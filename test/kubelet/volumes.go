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
	path string
	data []byte
	mode os.FileMode
}

// prepareVolumes materialises the pod's volumes under dir/<volume name> and returns the host directory of
// each volume. It fails (to be retried) while a referenced ConfigMap or Secret is missing.
func (k *Kubelet) prepareVolumes(ctx context.Context, pod *corev1.Pod, n *node, dir string, ad addrs) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		host := filepath.Join(dir, v.Name)
		var files []volumeFile
		var err error
		switch {
		case v.EmptyDir != nil:
		case v.HostPath != nil:
			host, err = k.hostPath(n, v.HostPath.Path)
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			out[v.Name] = host
			continue
		case v.ConfigMap != nil:
			files, err = k.configMapFiles(ctx, pod.Namespace, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional)
		case v.Secret != nil:
			files, err = k.secretFiles(ctx, pod.Namespace, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional)
		case v.DownwardAPI != nil:
			files, err = downwardFiles(pod, ad, v.DownwardAPI.Items)
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				var fs []volumeFile
				switch {
				case src.ServiceAccountToken != nil:
					fs, err = k.tokenFile(ctx, pod, src.ServiceAccountToken)
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
			if err := os.WriteFile(p, f.data, cmp.Or(f.mode, 0o644)); err != nil {
				return nil, err
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
// projected serviceAccountToken sources.
func (k *Kubelet) tokenFile(ctx context.Context, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection) ([]volumeFile, error) {
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
	return []volumeFile{{path: src.Path, data: []byte(tr.Status.Token), mode: 0o600}}, nil
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
