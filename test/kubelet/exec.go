package kubelet

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/spdy"

	"github.com/ambit-mesh/ambit/test/proc"
)

// execProtocol is the remote-command protocol the kubelet serves: v4 (the exit status as a JSON metav1.Status
// on the error stream). kube-apiserver speaks it to kubelets, also for kubectl's WebSocket (v5) sessions.
const execProtocol = "v4.channel.k8s.io"

// execTarget returns what exec needs of a running container: its process, the init that joins it, its env.
func (k *Kubelet) execTarget(namespace, pod, name string) (pid int, init, env []string, err error) {
	k.mu.Lock()
	var w *podWorker
	for _, cand := range k.workers {
		if _, ok := cand.info(namespace, pod); ok {
			w = cand
		}
	}
	k.mu.Unlock()
	if w == nil {
		return 0, nil, nil, fmt.Errorf("pod %s/%s is not running on this kubelet", namespace, pod)
	}
	w.mu.Lock()
	ctrs := w.execable
	w.mu.Unlock()
	for _, c := range ctrs {
		if c.spec.Name != name {
			continue
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.running || c.proc == nil || c.execInit == nil {
			return 0, nil, nil, fmt.Errorf("container %q of pod %s/%s is not running", name, namespace, pod)
		}
		return c.proc.Pid(), c.execInit, c.env, nil
	}
	return 0, nil, nil, fmt.Errorf("container %q not found in pod %s/%s", name, namespace, pod)
}

// execCommand is the process exec runs: the container init entered into the container's mount and network
// namespaces (where its root is mounted), applying the container's credentials and chroot, then argv.
func execCommand(pid int, init, env, argv []string) *exec.Cmd {
	args := append([]string{"--target", strconv.Itoa(pid), "--mount", "--uts", "--net", "--"}, init...)
	cmd := exec.Command("nsenter", append(args, argv...)...)
	cmd.Env = env
	return cmd
}

// exec serves pods/exec as the kubelet does over SPDY (remote-command protocol v4, no TTY): the streams the
// query asks for (input, output, error) are the command's standard streams, and its exit status goes to the
// error stream.
func (s *server) exec(w http.ResponseWriter, req *http.Request) {
	ns, name, ctr := req.PathValue("namespace"), req.PathValue("pod"), req.PathValue("container")
	q := req.URL.Query()
	on := func(k string) bool { v := q.Get(k); return v == "1" || v == "true" }
	stdin, stdout, stderr := on(corev1.ExecStdinParam), on(corev1.ExecStdoutParam), on(corev1.ExecStderrParam)
	argv := q[corev1.ExecCommandParam]
	switch {
	case on(corev1.ExecTTYParam):
		http.Error(w, "this kubelet does not allocate terminals (tty)", http.StatusBadRequest)
		return
	case len(argv) == 0:
		http.Error(w, "you must specify at least 1 command", http.StatusBadRequest)
		return
	case !stdin && !stdout && !stderr:
		http.Error(w, "you must specify at least 1 of stdin, stdout, stderr", http.StatusBadRequest)
		return
	}
	pid, init, env, err := s.k.execTarget(ns, name, ctr)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	if _, err := httpstream.Handshake(req, w, []string{execProtocol}); err != nil {
		return // Handshake wrote the error
	}
	streams := make(chan httpstream.Stream, 4)
	conn := spdy.NewResponseUpgrader().UpgradeResponse(w, req, func(st httpstream.Stream, _ <-chan struct{}) error {
		select {
		case streams <- st:
			return nil
		default:
			return errors.New("too many streams")
		}
	})
	if conn == nil {
		return // UpgradeResponse wrote the error
	}
	defer conn.Close()
	want := 1 // the error stream
	for _, b := range []bool{stdin, stdout, stderr} {
		if b {
			want++
		}
	}
	got := map[string]httpstream.Stream{}
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for len(got) < want {
		select {
		case st := <-streams:
			got[st.Headers().Get(corev1.StreamType)] = st
		case <-timeout.C:
			s.k.log.Debug("exec: streams not created in time", "pod", ns+"/"+name)
			return
		case <-req.Context().Done():
			return
		}
	}
	errStream := got[corev1.StreamTypeError]
	if errStream == nil {
		return
	}
	defer errStream.Close()
	cmd := execCommand(pid, init, env, argv)
	if st := got[corev1.StreamTypeStdout]; st != nil {
		cmd.Stdout = st
	}
	if st := got[corev1.StreamTypeStderr]; st != nil {
		cmd.Stderr = st
	}
	var in io.WriteCloser
	if got[corev1.StreamTypeStdin] != nil {
		if in, err = cmd.StdinPipe(); err != nil {
			writeExecStatus(errStream, err)
			return
		}
	}
	p, err := proc.Start(cmd)
	if err != nil {
		writeExecStatus(errStream, err)
		return
	}
	var wg sync.WaitGroup
	if in != nil {
		wg.Go(func() {
			_, _ = io.Copy(in, got[corev1.StreamTypeStdin])
			in.Close()
		})
	}
	stop := make(chan struct{})
	go func() {
		select {
		case <-req.Context().Done():
			_ = p.Signal(9)
		case <-stop:
		}
	}()
	err = p.Wait()
	close(stop)
	if st := got[corev1.StreamTypeStdout]; st != nil {
		st.Close()
	}
	if st := got[corev1.StreamTypeStderr]; st != nil {
		st.Close()
	}
	writeExecStatus(errStream, err)
	errStream.Close()
	conn.Close() // ends the stdin copy
	wg.Wait()
}

// writeExecStatus writes the command's outcome as protocol v4 does: Success, NonZeroExitCode with an ExitCode
// cause, or the error's message.
func writeExecStatus(w io.Writer, err error) {
	st := metav1.Status{Status: metav1.StatusSuccess}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		st = metav1.Status{Status: metav1.StatusFailure, Reason: "NonZeroExitCode",
			Message: fmt.Sprintf("command terminated with non-zero exit code: %v", err),
			Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{Type: "ExitCode", Message: strconv.Itoa(ee.ExitCode())}}}}
	case err != nil:
		st = metav1.Status{Status: metav1.StatusFailure, Reason: metav1.StatusReasonInternalError, Message: err.Error()}
	}
	b, _ := json.Marshal(st)
	_, _ = w.Write(b)
}
