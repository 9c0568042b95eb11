package local

import (
	"fmt"
	"net/netip"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// validateMeta checks the name, namespace and labels of an object as the API server would, defaulting
// an empty namespace of a namespaced object to "default".
func validateMeta(m *metav1.ObjectMeta, namespaced bool) error {
	if m.Name == "" {
		return fmt.Errorf("metadata.name is required")
	}
	if errs := validation.IsDNS1123Subdomain(m.Name); len(errs) > 0 {
		return fmt.Errorf("metadata.name %q: %s", m.Name, strings.Join(errs, "; "))
	}
	if namespaced {
		if m.Namespace == "" {
			m.Namespace = "default"
		}
		if errs := validation.IsDNS1123Label(m.Namespace); len(errs) > 0 {
			return fmt.Errorf("metadata.namespace %q: %s", m.Namespace, strings.Join(errs, "; "))
		}
	} else if m.Namespace != "" {
		return fmt.Errorf("metadata.namespace must be empty for a cluster-scoped object")
	}
	if errs := metav1validation.ValidateLabels(m.Labels, field.NewPath("metadata", "labels")); len(errs) > 0 {
		return errs.ToAggregate()
	}
	return nil
}

// validateLabelMap checks a label map that is not metadata (a selector, ServiceEntry endpoint labels).
func validateLabelMap(lbls map[string]string, path ...string) error {
	p := field.NewPath(path[0], path[1:]...)
	if errs := metav1validation.ValidateLabels(lbls, p); len(errs) > 0 {
		return errs.ToAggregate()
	}
	return nil
}

func parseIP(what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s: invalid IP %q", what, s)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%s: IP %q must not have a zone", what, s)
	}
	return a.Unmap(), nil
}

func validPort(what string, p int64) error {
	if p < 1 || p > 65535 {
		return fmt.Errorf("%s: port %d out of range 1-65535", what, p)
	}
	return nil
}
