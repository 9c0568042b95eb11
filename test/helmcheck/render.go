package helmcheck

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
)

// Render renders the chart in dir as `helm template <release> <dir> -n <namespace> --include-crds` does, with
// values merged over the chart's defaults, and returns the manifest: the CRDs first, then the templates in
// Helm's install order, each document headed by its "# Source:" comment.
func Render(dir, release, namespace string, values map[string]any) (string, error) {
	chrt, err := loader.Load(dir)
	if err != nil {
		return "", fmt.Errorf("load chart: %w", err)
	}
	opts := chartutil.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true, Revision: 1}
	vals, err := chartutil.ToRenderValues(chrt, values, opts, chartutil.DefaultCapabilities)
	if err != nil {
		return "", fmt.Errorf("values: %w", err)
	}
	files, err := engine.Render(chrt, vals)
	if err != nil {
		return "", fmt.Errorf("render: %w", err)
	}
	var b strings.Builder
	for _, crd := range chrt.CRDObjects() {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", crd.Filename, strings.TrimSpace(string(crd.File.Data)))
	}
	var manifests []releaseutil.Manifest
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if strings.HasPrefix(filepath.Base(name), "_") || strings.TrimSpace(files[name]) == "" {
			continue
		}
		manifests = append(manifests, releaseutil.Manifest{Name: name, Content: files[name]})
	}
	_, sorted, err := releaseutil.SortManifests(map[string]string(toMap(manifests)), chartutil.DefaultVersionSet, releaseutil.InstallOrder)
	if err != nil {
		return "", fmt.Errorf("sort manifests: %w", err)
	}
	for _, m := range sorted {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, strings.TrimSpace(stripSourceHeader(m.Content)))
	}
	return b.String(), nil
}

func toMap(ms []releaseutil.Manifest) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		out[m.Name] = m.Content
	}
	return out
}

// stripSourceHeader drops the "# Source:" line SortManifests adds, so that each document gets exactly one.
func stripSourceHeader(s string) string {
	s = strings.TrimLeft(s, "\n")
	if strings.HasPrefix(s, "# Source:") {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			return s[i+1:]
		}
	}
	return s
}
