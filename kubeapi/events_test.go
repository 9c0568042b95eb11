package kubeapi

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/test/testutil"
)

func object(apiVersion, kind, ns, name string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	u.SetNamespace(ns)
	u.SetName(name)
	u.SetUID(types.UID(name + "-uid"))
	u.SetResourceVersion("7")
	return u
}

func TestNewEvent(t *testing.T) {
	now := time.Unix(1700000000, 5)
	cases := []struct {
		name     string
		obj      Object
		wantName string
		wantNS   string
	}{
		{"namespaced", object("networking.istio.io/v1", "DestinationRule", "egress", "api"), "api.17979cfe362a0005", "egress"},
		{"cluster-scoped goes to default", object("v1", "Namespace", "", "apps"), "apps.17979cfe362a0005", "default"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev := NewEvent(c.obj, "ambit-waypoint", corev1.EventTypeWarning, "UnsupportedField", "spec.x", now)
			io := ev.InvolvedObject
			if ev.Name != c.wantName || ev.Namespace != c.wantNS || io.Kind != c.obj.GetKind() || io.APIVersion != c.obj.GetAPIVersion() ||
				io.Namespace != c.obj.GetNamespace() || io.Name != c.obj.GetName() || io.UID != c.obj.GetUID() || io.ResourceVersion != "7" ||
				ev.Type != corev1.EventTypeWarning || ev.Reason != "UnsupportedField" || ev.Message != "spec.x" || ev.Count != 1 ||
				!ev.FirstTimestamp.Time.Equal(now) || !ev.LastTimestamp.Time.Equal(now) || ev.Source.Component != "ambit-waypoint" {
				t.Errorf("NewEvent = %+v", ev)
			}
		})
	}
}

// sink records the events created, failing the first fails calls.
type sink struct {
	mu      sync.Mutex
	fails   int
	calls   int
	created []*corev1.Event
	wrote   chan struct{}
}

func (s *sink) Create(ev *corev1.Event) (*corev1.Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.calls <= s.fails {
		return nil, errors.New("API server unavailable")
	}
	s.created = append(s.created, ev)
	s.wrote <- struct{}{}
	return ev, nil
}

// TestEventWriterRetries: an event the API server refuses twice is written on the third try.
func TestEventWriterRetries(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := &sink{fails: 2, wrote: make(chan struct{}, 1)}
	w := NewEventWriter(s, "ambit-waypoint", nil)
	w.retry = time.Millisecond
	stop := RunEvents(t.Context(), w)
	defer stop()
	w.Emit(object("v1", "Pod", "ns", "p"), corev1.EventTypeWarning, "R", "m")
	<-s.wrote
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls != 3 || len(s.created) != 1 || s.created[0].InvolvedObject.Name != "p" {
		t.Errorf("%d calls, created %v", s.calls, s.created)
	}
}

// TestEventWriterBounded: with the writer not running, Emit never blocks; the queue keeps EventQueue events.
func TestEventWriterBounded(t *testing.T) {
	w := NewEventWriter(&sink{}, "c", nil)
	for range EventQueue + 10 {
		w.Emit(object("v1", "Pod", "ns", "p"), corev1.EventTypeNormal, "R", "m")
	}
	if len(w.queue) != EventQueue {
		t.Errorf("queued %d, want %d", len(w.queue), EventQueue)
	}
}

// TestEventWriterGivesUp: an event refused eventTries times is dropped, and the writer goes on with the next.
func TestEventWriterGivesUp(t *testing.T) {
	testutil.CheckGoroutines(t)
	s := &sink{fails: eventTries, wrote: make(chan struct{}, 1)}
	w := NewEventWriter(s, "c", nil)
	w.retry = time.Millisecond
	stop := RunEvents(context.Background(), w)
	defer stop()
	w.Emit(object("v1", "Pod", "ns", "dropped"), corev1.EventTypeNormal, "R", "m")
	w.Emit(object("v1", "Pod", "ns", "written"), corev1.EventTypeNormal, "R", "m")
	<-s.wrote
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls != eventTries+1 || len(s.created) != 1 || s.created[0].InvolvedObject.Name != "written" {
		t.Errorf("%d calls, created %v", s.calls, s.created)
	}
}
