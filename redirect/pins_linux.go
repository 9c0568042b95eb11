package redirect

import (
	"bytes"
	"errors"
	"fmt"
	"os"
)

// livePinView reads the pin check's view of the calling thread (its mount namespace may differ from the
// process's when a thread unshared one) and of PID 1.
func livePinView() (pinView, error) {
	var v pinView
	self, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		return v, fmt.Errorf("read mountinfo: %w", err)
	}
	if v.Self, err = parseMountinfo(bytes.NewReader(self)); err != nil {
		return v, err
	}
	if v.SelfNS, err = os.Readlink("/proc/thread-self/ns/mnt"); err != nil {
		return v, fmt.Errorf("read mount namespace: %w", err)
	}
	status, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		return v, fmt.Errorf("read process status: %w", err)
	}
	v.InitPID = initPIDNamespace(string(status))
	// PID 1's namespace link needs ptrace access to it, its mountinfo less; without either the check falls
	// back to the mount's propagation.
	if v.HostNS, err = os.Readlink("/proc/1/ns/mnt"); err != nil {
		v.HostNS = ""
	}
	if v.HostNS == "" || v.HostNS != v.SelfNS {
		if host, err := os.ReadFile("/proc/1/mountinfo"); err == nil {
			if v.Host, err = parseMountinfo(bytes.NewReader(host)); err != nil {
				v.Host = nil
			}
		}
	}
	return v, nil
}

// checkPinDir refuses (ErrEphemeralPins) a pin directory that will not outlive the process unless
// o.AllowEphemeralPins, in which case it logs why at error level and lets capture start.
func checkPinDir(o Options) error {
	v, err := livePinView()
	if err != nil {
		return fmt.Errorf("check pin directory %s: %w", o.PinDir, err)
	}
	err = checkPins(o.PinDir, v)
	if errors.Is(err, ErrEphemeralPins) && o.AllowEphemeralPins {
		o.Logger.Error("CAPTURE DIES WITH THIS PROCESS: pinned capture state is ephemeral (allowed by --allow-ephemeral-pins); while no agent runs, captured pods' traffic bypasses the mesh",
			"component", "redirect", "pin_dir", o.PinDir, "reason", err)
		return nil
	}
	return err
}
