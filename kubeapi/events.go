package kubeapi

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EventSink creates events (Events of CoreV1; client-go's typed EventSinkImpl has the same method).
type EventSink interface {
	Create(event *corev1.Event) (*corev1.Event, error)
}

// Object is what an event is about: a Kubernetes object with its kind (an unstructured object from an
// informer, or a typed one with its TypeMeta set).
type Object interface {
	metav1.Object
	GetAPIVersion() string
	GetKind() string
}

// NewEvent returns the event a recorder writes about obj at now, named as client-go's recorder names them
// ("<object name>.<unix nanoseconds in hex>", in the object's namespace, "default" for a cluster-scoped one).
func NewEvent(obj Object, component, eventType, reason, message string, now time.Time) *corev1.Event {
	ns := obj.GetNamespace()
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	t := metav1.NewTime(now)
	return &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%v.%x", obj.GetName(), now.UnixNano()), Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: obj.GetKind(), APIVersion: obj.GetAPIVersion(),
			Namespace: obj.GetNamespace(), Name: obj.GetName(), UID: obj.GetUID(), ResourceVersion: obj.GetResourceVersion()},
		Reason: reason, Message: message, Type: eventType, Count: 1, FirstTimestamp: t, LastTimestamp: t,
		Source: corev1.EventSource{Component: component},
	}
}

// EventWriter writes events in the background, so that the caller never waits for the API server: Emit queues
// (up to EventQueue events; beyond, they are dropped and logged) and Run writes them, each tried up to
// eventTries times. The callers deduplicate (as waypoint/kube does: one event per object generation), so
// there is no correlation as in client-go's recorder. Create it with NewEventWriter.
type EventWriter struct {
	sink      EventSink
	component string
	log       *slog.Logger
	queue     chan *corev1.Event
	retry     time.Duration
	now       func() time.Time
}

// EventQueue bounds the events waiting to be written.
const EventQueue = 256

const eventTries = 3

// NewEventWriter returns a writer to sink of events from component; log may be nil.
func NewEventWriter(sink EventSink, component string, log *slog.Logger) *EventWriter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &EventWriter{sink: sink, component: component, log: log, queue: make(chan *corev1.Event, EventQueue),
		retry: time.Second, now: time.Now}
}

// Emit queues an event about obj.
func (w *EventWriter) Emit(obj Object, eventType, reason, message string) {
	ev := NewEvent(obj, w.component, eventType, reason, message, w.now())
	select {
	case w.queue <- ev:
	default:
		w.log.Warn("event queue full; event dropped", "object", obj.GetNamespace()+"/"+obj.GetName(), "reason", reason)
	}
}

// Run writes the queued events until ctx ends.
func (w *EventWriter) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-w.queue:
			w.write(ctx, ev)
		}
	}
}

func (w *EventWriter) write(ctx context.Context, ev *corev1.Event) {
	for try := 1; ; try++ {
		_, err := w.sink.Create(ev)
		if err == nil {
			return
		}
		if try == eventTries {
			w.log.Warn("write event", "object", ev.InvolvedObject.Namespace+"/"+ev.InvolvedObject.Name,
				"reason", ev.Reason, "tries", try, "err", err)
			return
		}
		t := time.NewTimer(time.Duration(try) * w.retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// RunEvents runs w until ctx ends and returns a function that stops it and waits for it.
func RunEvents(ctx context.Context, w *EventWriter) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.Run(ctx) })
	return func() { cancel(); wg.Wait() }
}
