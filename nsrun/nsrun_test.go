package nsrun

import (
	"errors"
	"strings"
	"testing"
)

func TestDo(t *testing.T) {
	errFn := errors.New("from fn")
	if err := Do("", func() error { return errFn }); !errors.Is(err, errFn) {
		t.Errorf(`Do("") = %v, want fn's error`, err)
	}
	// The process's own namespace by path: fn runs on a thread that entered it, and its error comes back.
	ran := false
	if err := Do("/proc/self/ns/net", func() error { ran = true; return nil }); err != nil || !ran {
		t.Errorf("Do(/proc/self/ns/net) = %v, ran %v", err, ran)
	}
	err := Do("/nonexistent/netns", func() error { t.Error("fn ran for a namespace that does not exist"); return nil })
	if err == nil || !strings.Contains(err.Error(), "open netns /nonexistent/netns") {
		t.Errorf("Do(missing) = %v, want an open error", err)
	}
}
