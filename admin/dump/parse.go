package dump

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
)

// UnmarshalJSON accepts a list of strings or an object whose keys are the names.
func (s *ServiceNames) UnmarshalJSON(b []byte) error {
	if b = bytes.TrimSpace(b); len(b) > 0 && b[0] == '{' {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		*s = slices.Sorted(maps.Keys(m))
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	*s = l
	return nil
}

// rawDump defers the sections that ztunnel writes either as lists or as maps.
type rawDump struct {
	Workloads     json.RawMessage          `json:"workloads"`
	Services      json.RawMessage          `json:"services"`
	Policies      json.RawMessage          `json:"policies"`
	Certificates  json.RawMessage          `json:"certificates"`
	WorkloadState map[string]WorkloadState `json:"workloadState"`
	Version       *BuildInfo               `json:"version"`
	Config        json.RawMessage          `json:"config"`
	NodeName      string                   `json:"nodeName"`
}

// Parse decodes a config dump written by Ambit or by ztunnel. Sections may be lists or maps (then taken in
// key order); unknown fields are ignored, as istioctl does.
func Parse(b []byte) (*ConfigDump, error) {
	if b = bytes.TrimSpace(b); len(b) == 0 || b[0] != '{' {
		return nil, fmt.Errorf("parse config dump: %w", ErrNotObject)
	}
	var raw rawDump
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("parse config dump: %w", err)
	}
	d := &ConfigDump{WorkloadState: raw.WorkloadState, Version: raw.Version, NodeName: raw.NodeName}
	if len(raw.Config) > 0 && !bytes.Equal(raw.Config, []byte("null")) {
		d.Config = raw.Config
	}
	if err := listOrMap(raw.Workloads, &d.Workloads); err != nil {
		return nil, fmt.Errorf("parse config dump: workloads: %w", err)
	}
	if err := listOrMap(raw.Services, &d.Services); err != nil {
		return nil, fmt.Errorf("parse config dump: services: %w", err)
	}
	if err := listOrMap(raw.Policies, &d.Policies); err != nil {
		return nil, fmt.Errorf("parse config dump: policies: %w", err)
	}
	if err := listOrMap(raw.Certificates, &d.Certificates); err != nil {
		return nil, fmt.Errorf("parse config dump: certificates: %w", err)
	}
	// A null element would be a nil pointer for every reader; drop them here once.
	d.Workloads = slices.DeleteFunc(d.Workloads, func(w *Workload) bool { return w == nil })
	d.Services = slices.DeleteFunc(d.Services, func(s *Service) bool { return s == nil })
	d.Policies = slices.DeleteFunc(d.Policies, func(p *Policy) bool { return p == nil })
	d.Certificates = slices.DeleteFunc(d.Certificates, func(c *Certificate) bool { return c == nil })
	return d, nil
}

// listOrMap decodes a JSON list into *out, or a JSON object's values in key order. Absent or null is empty.
func listOrMap[T any](b json.RawMessage, out *[]T) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || bytes.Equal(b, []byte("null")) {
		return nil
	}
	if b[0] == '[' {
		return json.Unmarshal(b, out)
	}
	var m map[string]T
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		*out = append(*out, m[k])
	}
	return nil
}
