package kubelet

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/test/proc"
)

// Image is how the kubelet runs a container image: a host executable shown at Path inside the container's
// root (bind-mounted), started with Entrypoint unless the container sets a command.
type Image struct {
	// Binary is the executable on the host. Required.
	Binary string
	// Path is where the image has it (for example /usr/local/bin/ambit). Required.
	Path string
	// Entrypoint is the image's ENTRYPOINT (default: Path).
	Entrypoint []string
	// User is the image's USER, numeric "uid" or "uid:gid" (default: root).
	User string
	// Files are the image's other files: path inside the container -> file on the host, shown read-only (for
	// example a second executable on the PATH, or a certificate the entrypoint reads).
	Files map[string]string
}

// imageRepository strips the tag and digest of an image reference.
func imageRepository(ref string) string {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		ref = ref[:i]
	}
	return ref
}

var varRef = regexp.MustCompile(`\$\$|\$\([A-Za-z_][A-Za-z0-9_.-]*\)`)

// expand replaces $(VAR) references to the container's environment, as Kubernetes does for command and args
// ($$ escapes a dollar; unknown references stay as written).
func expand(s string, env map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		if v, ok := env[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

// containerEnv resolves a container's environment: the kubernetes service variables, then the container's own
// env in order (with $(VAR) expansion against what is defined before), fieldRef and resourceFieldRef.
func (k *Kubelet) containerEnv(pod *corev1.Pod, c *corev1.Container, ad addrs, n *node) ([]string, map[string]string, error) {
	env := map[string]string{}
	var order []string
	set := func(name, v string) {
		if _, ok := env[name]; !ok {
			order = append(order, name)
		}
		env[name] = v
	}
	set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	set("HOSTNAME", pod.Name)
	if k.apiVIP.IsValid() {
		set("KUBERNETES_SERVICE_HOST", k.apiVIP.Addr().String())
		set("KUBERNETES_SERVICE_PORT", strconv.Itoa(int(k.apiVIP.Port())))
		set("KUBERNETES_SERVICE_PORT_HTTPS", strconv.Itoa(int(k.apiVIP.Port())))
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			set(e.Name, expand(e.Value, env))
		case e.ValueFrom.FieldRef != nil:
			v, err := fieldValue(pod, ad, e.ValueFrom.FieldRef.FieldPath)
			if err != nil {
				return nil, nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			set(e.Name, v)
		case e.ValueFrom.ResourceFieldRef != nil:
			set(e.Name, resourceValue(e.ValueFrom.ResourceFieldRef, n))
		case e.ValueFrom.ConfigMapKeyRef != nil || e.ValueFrom.SecretKeyRef != nil:
			return nil, nil, fmt.Errorf("env %s: configMapKeyRef and secretKeyRef are not supported", e.Name)
		}
	}
	out := make([]string, 0, len(order))
	for _, name := range order {
		out = append(out, name+"="+env[name])
	}
	return out, env, nil
}

// resourceValue answers a resourceFieldRef: without limits, the node's allocatable amount, in the divisor's
// unit (cpu in cores, rounded up; memory in bytes).
func resourceValue(r *corev1.ResourceFieldSelector, n *node) string {
	switch {
	case strings.HasSuffix(r.Resource, "cpu"):
		return strconv.Itoa(nodeCPUs)
	case strings.HasSuffix(r.Resource, "memory"):
		return strconv.FormatInt(nodeMemory, 10)
	}
	return "0"
}

// command returns the process argv of a container: command (or the image's entrypoint) then args, with
// $(VAR) references expanded.
func command(c *corev1.Container, img Image, env map[string]string) []string {
	var argv []string
	cmd := c.Command
	if len(cmd) == 0 {
		cmd = img.Entrypoint
		if len(cmd) == 0 {
			cmd = []string{img.Path}
		}
	}
	for _, s := range append(slices.Clone(cmd), c.Args...) {
		argv = append(argv, expand(s, env))
	}
	return argv
}

// mount is one bind mount into a container's root.
type mount struct {
	host, path string
	readOnly   bool
}

// launchScript builds the shell script that makes the container's root and starts argv in it. It runs inside
// the pod's network namespace (nsenter) and a private mount namespace (unshare), so nothing it mounts is seen
// by the host: a tmpfs root with the host's /usr (except /usr/local), the usr-merged /bin, /sbin and /lib
// links, /proc, /sys and /dev, a fresh /etc with the generated hosts file, then the image's executable and the
// volumes at their paths. The host's directories and the image's executable are read-only, as an image's files
// are to the host; the container's UTS namespace gets hostname (when set); with readOnlyRootFilesystem the root itself becomes read-only (the volumes stay writable
// unless their mount says readOnly). Last, the script executes the container init of package test/proc, which
// chroots and applies sec (user, groups, capabilities, no_new_privs) before it executes argv.
func launchScript(root, etc, hostname string, img Image, mounts []mount, sec security) (string, error) {
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
	var b strings.Builder
	b.WriteString("set -e\nR=" + q(root) + "\n")
	if hostname != "" {
		b.WriteString("printf %s " + q(hostname) + " >/proc/sys/kernel/hostname\n")
	}
	b.WriteString("mount -t tmpfs -o mode=0755 kubelet-root \"$R\"\n")
	b.WriteString(`for d in bin sbin lib lib32 lib64 libx32; do
  if [ -L /$d ]; then ln -s "$(readlink /$d)" "$R/$d"; elif [ -d /$d ]; then mkdir "$R/$d"; mount --rbind /$d "$R/$d"; mount -o remount,bind,ro "$R/$d"; fi
done
mkdir -p "$R/usr/local/bin" "$R/proc" "$R/sys" "$R/dev" "$R/tmp" "$R/run" "$R/var/lib" "$R/var/tmp" "$R/etc"
ln -s ../run "$R/var/run"
chmod 1777 "$R/tmp" "$R/var/tmp"
for d in /usr/*; do
  [ "$d" = /usr/local ] && continue
  [ -d "$d" ] || continue
  mkdir "$R$d"; mount --rbind "$d" "$R$d"; mount -o remount,bind,ro "$R$d"
done
mount --rbind /proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
`)
	b.WriteString("cp -a " + q(etc) + "/. \"$R/etc/\"\n")
	all := []mount{{host: img.Binary, path: img.Path, readOnly: true}}
	for _, p := range slices.Sorted(maps.Keys(img.Files)) {
		all = append(all, mount{host: img.Files[p], path: p, readOnly: true})
	}
	all = append(all, mounts...)
	for _, m := range all {
		p := filepath.Clean(m.path)
		if !filepath.IsAbs(p) {
			return "", fmt.Errorf("mount path %q is not absolute", m.path)
		}
		for _, shared := range []string{"/usr/bin", "/usr/sbin", "/usr/lib", "/usr/share", "/proc", "/dev"} {
			if p == shared || strings.HasPrefix(p, shared+"/") {
				return "", fmt.Errorf("mount path %q is inside the host's %s", m.path, shared)
			}
		}
		st, err := os.Stat(m.host)
		if err != nil {
			return "", fmt.Errorf("mount source: %w", err)
		}
		if st.IsDir() {
			b.WriteString("mkdir -p \"$R\"" + q(p) + "\n")
		} else {
			b.WriteString("mkdir -p \"$R\"" + q(filepath.Dir(p)) + " && touch \"$R\"" + q(p) + "\n")
		}
		b.WriteString("mount --bind " + q(m.host) + " \"$R\"" + q(p) + "\n")
		if m.readOnly {
			b.WriteString("mount -o remount,bind,ro \"$R\"" + q(p) + "\n")
		}
	}
	if sec.readOnlyRoot {
		b.WriteString("mount -o remount,bind,ro \"$R\"\n")
	}
	ps := sec.Security
	ps.Root = root
	init, err := ps.InitArgv()
	if err != nil {
		return "", err
	}
	b.WriteString("exec")
	for _, a := range init {
		b.WriteString(" " + q(a))
	}
	b.WriteString(" \"$@\"\n")
	return b.String(), nil
}

// startProcess starts argv as a container: in netns (a path), with env, output appended to logPath. The process
// dies with the kubelet's process (package test/proc: death signal, its own process group, killed with it).
func startProcess(netnsPath, script string, argv, env []string, logPath string) (*proc.Proc, *os.File, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	args := append([]string{"--net=" + netnsPath, "--", "unshare", "--mount", "--uts", "--propagation", "private", "--",
		"/bin/sh", "-c", script, "container"}, argv...)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	p, err := proc.Start(cmd)
	if err != nil {
		logf.Close()
		return nil, nil, fmt.Errorf("start container: %w", err)
	}
	return p, logf, nil
}
