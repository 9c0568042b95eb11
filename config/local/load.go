package local

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/config/resource"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
)

// ErrUnknownKind is wrapped by errors for documents whose apiVersion/kind Ambit does not read.
var ErrUnknownKind = errors.New("unknown kind")

// InputError locates a bad document: the file, its 1-based document index and, when known, the object.
type InputError struct {
	File      string
	Doc       int
	Kind      string
	Namespace string
	Name      string
	Err       error
}

func (e *InputError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	fmt.Fprintf(&b, ": document %d", e.Doc)
	if e.Kind != "" {
		b.WriteString(" (" + e.Kind)
		switch {
		case e.Namespace != "" && e.Name != "":
			b.WriteString(" " + e.Namespace + "/" + e.Name)
		case e.Name != "":
			b.WriteString(" " + e.Name)
		}
		b.WriteString(")")
	}
	b.WriteString(": " + e.Err.Error())
	return b.String()
}

func (e *InputError) Unwrap() error { return e.Err }

// Source records where an object came from, for error messages.
type Source struct {
	File string
	Doc  int
	// Seq orders objects across files and kinds as they were read.
	Seq int
}

// Objects are the typed objects read from the input, in input order.
type Objects struct {
	Namespaces            []*corev1.Namespace
	Nodes                 []*corev1.Node
	Services              []*corev1.Service
	Pods                  []*corev1.Pod
	Gateways              []*gwv1.Gateway
	GatewayClasses        []*gwv1.GatewayClass
	ServiceEntries        []*networkingv1.ServiceEntry
	WorkloadEntries       []*networkingv1.WorkloadEntry
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	PeerAuthentications   []*securityv1.PeerAuthentication

	// L7 kinds, read for the L7 waypoint (waypoint/compile compiles them; Compile ignores them).
	HTTPRoutes             []*gwv1.HTTPRoute
	GRPCRoutes             []*gwv1.GRPCRoute
	VirtualServices        []*networkingv1.VirtualService
	DestinationRules       []*networkingv1.DestinationRule
	RequestAuthentications []*securityv1.RequestAuthentication
	RateLimitPolicies      []*resource.LocalRateLimitPolicy

	// sources maps each object (by pointer) to its origin.
	sources map[any]Source
}

// SourceOf returns where obj was read from.
func (o *Objects) SourceOf(obj any) Source { return o.sources[obj] }

func (o *Objects) add(obj any, src Source) {
	if o.sources == nil {
		o.sources = map[any]Source{}
	}
	src.Seq = len(o.sources)
	o.sources[obj] = src
}

// LoadFiles reads every path (a file, or a directory whose *.yaml, *.yml and *.json files are read in
// name order) and returns the objects. The first bad document stops the load with an *InputError.
func LoadFiles(paths ...string) (*Objects, error) {
	objs := &Objects{}
	for _, p := range paths {
		files, err := expand(p)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("read config: %w", err)
			}
			if err := objs.Decode(f, data); err != nil {
				return nil, err
			}
		}
	}
	return objs, nil
}

func expand(p string) ([]string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if !st.IsDir() {
		return []string{p}, nil
	}
	ents, err := os.ReadDir(p)
	if err != nil {
		return nil, fmt.Errorf("read config dir: %w", err)
	}
	var out []string
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".yaml", ".yml", ".json":
			if !e.IsDir() {
				out = append(out, filepath.Join(p, e.Name()))
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Decode parses a multi-document YAML (or JSON) stream named file and appends its objects.
func (o *Objects) Decode(file string, data []byte) error {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return &InputError{File: file, Doc: doc, Err: fmt.Errorf("read YAML: %w", err)}
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			doc-- // empty documents (a leading ---, comments only) do not count
			continue
		}
		if err := o.decodeDoc(Source{File: file, Doc: doc}, raw); err != nil {
			return err
		}
	}
}

func stripComments(b []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

func (o *Objects) decodeDoc(src Source, raw []byte) error {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return &InputError{File: src.File, Doc: src.Doc, Err: fmt.Errorf("parse YAML: %w", err)}
	}
	var head struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return &InputError{File: src.File, Doc: src.Doc, Err: fmt.Errorf("parse object header: %w", err)}
	}
	ierr := func(err error) error {
		return &InputError{File: src.File, Doc: src.Doc, Kind: head.Kind, Namespace: head.Metadata.Namespace, Name: head.Metadata.Name, Err: err}
	}
	if head.Kind == "" || head.APIVersion == "" {
		return ierr(errors.New("missing apiVersion or kind"))
	}
	group, _, _ := strings.Cut(head.APIVersion, "/")
	if !strings.Contains(head.APIVersion, "/") {
		group = ""
	}
	switch {
	case group == "" && head.Kind == "List":
		var list struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(js, &list); err != nil {
			return ierr(fmt.Errorf("parse List: %w", err))
		}
		for _, item := range list.Items {
			if err := o.decodeDoc(src, item); err != nil {
				return err
			}
		}
		return nil
	case group == "" && head.APIVersion == "v1":
		switch head.Kind {
		case "Namespace":
			return decodeInto(o, src, js, &o.Namespaces, ierr)
		case "Node":
			return decodeInto(o, src, js, &o.Nodes, ierr)
		case "Service":
			return decodeInto(o, src, js, &o.Services, ierr)
		case "Pod":
			return decodeInto(o, src, js, &o.Pods, ierr)
		}
	case group == "gateway.networking.k8s.io":
		switch head.Kind {
		case "Gateway":
			return decodeInto(o, src, js, &o.Gateways, ierr)
		case "GatewayClass":
			return decodeInto(o, src, js, &o.GatewayClasses, ierr)
		case "HTTPRoute":
			return decodeInto(o, src, js, &o.HTTPRoutes, ierr)
		case "GRPCRoute":
			return decodeInto(o, src, js, &o.GRPCRoutes, ierr)
		}
	case group == "networking.istio.io":
		switch head.Kind {
		case "ServiceEntry":
			return decodeInto(o, src, js, &o.ServiceEntries, ierr)
		case "WorkloadEntry":
			return decodeInto(o, src, js, &o.WorkloadEntries, ierr)
		case "VirtualService":
			return decodeInto(o, src, js, &o.VirtualServices, ierr)
		case "DestinationRule":
			return decodeInto(o, src, js, &o.DestinationRules, ierr)
		}
	case group == "security.istio.io":
		switch head.Kind {
		case "AuthorizationPolicy":
			return decodeInto(o, src, js, &o.AuthorizationPolicies, ierr)
		case "PeerAuthentication":
			return decodeInto(o, src, js, &o.PeerAuthentications, ierr)
		case "RequestAuthentication":
			return decodeInto(o, src, js, &o.RequestAuthentications, ierr)
		}
	case group == resource.RateLimitGroup && head.APIVersion == resource.RateLimitGroup+"/v1alpha1" && head.Kind == "LocalRateLimitPolicy":
		return decodeInto(o, src, js, &o.RateLimitPolicies, ierr)
	}
	return ierr(fmt.Errorf("%w %s %s", ErrUnknownKind, head.APIVersion, head.Kind))
}

// decodeInto strictly decodes js (unknown fields are errors) into a new T and appends it to *list.
func decodeInto[T any](o *Objects, src Source, js []byte, list *[]*T, ierr func(error) error) error {
	obj := new(T)
	if err := resource.Decode(js, obj); err != nil {
		return ierr(err)
	}
	*list = append(*list, obj)
	o.add(obj, src)
	return nil
}
