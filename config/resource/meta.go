package resource

import (
	"errors"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	sigsjson "sigs.k8s.io/json"
)

// Decode strictly decodes the JSON of one object into obj: unknown and duplicate fields are errors, as
// the API server's strict field validation reports them.
func Decode(js []byte, obj any) error {
	strictErrs, err := sigsjson.UnmarshalStrict(js, obj)
	if err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	if len(strictErrs) > 0 {
		return fmt.Errorf("decode: %w", errors.Join(strictErrs...))
	}
	return nil
}

// ValidateMeta checks the name, namespace and labels of an object as the API server would, defaulting
// an empty namespace of a namespaced object to "default".
func ValidateMeta(m *metav1.ObjectMeta, namespaced bool) error {
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

// ValidateLabels checks a label map that is not metadata (a selector, ServiceEntry endpoint labels);
// path names the field ("spec", "subsets", "0", "labels").
func ValidateLabels(lbls map[string]string, path ...string) error {
	p := field.NewPath(path[0], path[1:]...)
	if errs := metav1validation.ValidateLabels(lbls, p); len(errs) > 0 {
		return errs.ToAggregate()
	}
	return nil
}
