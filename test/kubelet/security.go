package kubelet

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/test/proc"
)

// defaultCaps is containerd's default capability set for a container that is not privileged (oci.DefaultCaps
// in containerd's CRI plugin).
var defaultCaps = mustCaps("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")

func mustCaps(names ...string) proc.Caps {
	var c proc.Caps
	for _, n := range names {
		i, err := proc.ParseCap(n)
		if err != nil {
			panic(err)
		}
		c = c.With(i)
	}
	return c
}

// security is what one container runs with, resolved from the pod's and the container's securityContext.
type security struct {
	proc.Security
	readOnlyRoot bool
}

// passwdGID is the primary group of the users in the /etc/passwd every container gets (writeEtc); containerd
// reads it when runAsUser is set without runAsGroup. Unknown users get group 0.
var passwdGID = map[uint32]uint32{0: 0, 1337: 1337}

// parseImageUser reads an image's USER ("uid" or "uid:gid", numeric; empty is root).
func parseImageUser(s string) (uid, gid uint32, hasGID bool, err error) {
	if s == "" {
		return 0, 0, false, nil
	}
	u, g, hasGID := strings.Cut(s, ":")
	n, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		return 0, 0, false, fmt.Errorf("image user %q: only numeric users are supported", s)
	}
	if hasGID {
		m, err := strconv.ParseUint(g, 10, 32)
		if err != nil {
			return 0, 0, false, fmt.Errorf("image user %q: only numeric groups are supported", s)
		}
		gid = uint32(m)
	}
	return uint32(n), gid, hasGID, nil
}

// effectiveRunAsUser is the container's runAsUser, else the pod's (securitycontext.DetermineEffectiveRunAsUser).
func effectiveRunAsUser(pod *corev1.Pod, c *corev1.Container) *int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return c.SecurityContext.RunAsUser
	}
	if pod.Spec.SecurityContext != nil {
		return pod.Spec.SecurityContext.RunAsUser
	}
	return nil
}

// containerSecurity resolves the credentials, capabilities and restrictions of container c of pod, as the kubelet
// (DetermineEffectiveSecurityContext, verifyRunAsNonRoot) and containerd's CRI plugin do: container fields win
// over the pod's; the user is runAsUser, else the image's USER, else root; the group is runAsGroup, else the
// image's group (when the user comes from the image), else the user's primary group; the supplementary groups
// are the primary group, fsGroup and supplementalGroups; the capabilities are containerd's default set with
// drops (ALL: none) and adds (ALL: every one), or every capability for a privileged container; no_new_privs is
// set by allowPrivilegeEscalation: false. An error is a CreateContainerConfigError: the container does not start.
func containerSecurity(pod *corev1.Pod, c *corev1.Container, img Image) (security, error) {
	psc := pod.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	runAsNonRoot := sc.RunAsNonRoot
	if runAsNonRoot == nil {
		runAsNonRoot = psc.RunAsNonRoot
	}
	runAsGroup := sc.RunAsGroup
	if runAsGroup == nil {
		runAsGroup = psc.RunAsGroup
	}
	runAsUser := effectiveRunAsUser(pod, c)
	imgUID, imgGID, imgHasGID, err := parseImageUser(img.User)
	if err != nil {
		return security{}, err
	}
	podName := fmt.Sprintf("%s_%s(%s)", pod.Name, pod.Namespace, pod.UID) // the kubelet's format.Pod
	if runAsNonRoot != nil && *runAsNonRoot {
		switch {
		case runAsUser != nil && *runAsUser == 0:
			return security{}, fmt.Errorf("container's runAsUser breaks non-root policy (pod: %q, container: %s)", podName, c.Name)
		case runAsUser == nil && imgUID == 0:
			return security{}, fmt.Errorf("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", podName, c.Name)
		}
	}
	var s security
	s.UID = imgUID
	if runAsUser != nil {
		s.UID = uint32(*runAsUser)
	}
	switch {
	case runAsGroup != nil:
		s.GID = uint32(*runAsGroup)
	case runAsUser == nil && imgHasGID:
		s.GID = imgGID
	default:
		s.GID = passwdGID[s.UID]
	}
	groups := []uint32{s.GID}
	if psc.FSGroup != nil {
		groups = append(groups, uint32(*psc.FSGroup))
	}
	for _, g := range psc.SupplementalGroups {
		groups = append(groups, uint32(g))
	}
	slices.Sort(groups)
	s.Groups = slices.Compact(groups)

	privileged := sc.Privileged != nil && *sc.Privileged
	switch {
	case privileged:
		s.Caps = proc.AllCaps
	default:
		s.Caps = defaultCaps
		if caps := sc.Capabilities; caps != nil {
			// containerd's TweakCapabilities: ALL in add gives every capability, ALL in drop starts from none;
			// then the defaults without the drops, plus the adds.
			has := func(list []corev1.Capability) bool {
				return slices.ContainsFunc(list, func(c corev1.Capability) bool { return strings.EqualFold(string(c), "ALL") })
			}
			if has(caps.Drop) {
				s.Caps = 0
			}
			for _, d := range caps.Drop {
				if strings.EqualFold(string(d), "ALL") {
					continue
				}
				n, err := proc.ParseCap(string(d))
				if err != nil {
					return security{}, fmt.Errorf("drop: %w", err)
				}
				s.Caps = s.Caps.Without(n)
			}
			if has(caps.Add) {
				s.Caps = proc.AllCaps
			}
			for _, a := range caps.Add {
				if strings.EqualFold(string(a), "ALL") {
					continue
				}
				n, err := proc.ParseCap(string(a))
				if err != nil {
					return security{}, fmt.Errorf("add: %w", err)
				}
				s.Caps = s.Caps.With(n)
			}
		}
	}
	s.NoNewPrivs = !privileged && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	s.readOnlyRoot = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
	s.Dir = c.WorkingDir
	return s, nil
}

// fsUser is the owner the kubelet gives projected service-account tokens (volumeutil.FsUserFrom): the effective
// runAsUser shared by every container, when all set one and they agree.
func fsUser(pod *corev1.Pod) *int64 {
	var u *int64
	all := append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...)
	for i := range all {
		r := effectiveRunAsUser(pod, &all[i])
		if r == nil || u != nil && *u != *r {
			return nil
		}
		u = r
	}
	return u
}
