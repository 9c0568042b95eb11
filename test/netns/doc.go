// Package netns creates and deletes named network namespaces exactly as iproute2 does (`ip netns add` and
// `ip netns del`), so that test/lab, test/kubelet, the hack tools and iproute2 itself can share /var/run/netns
// without hiding each other's namespaces:
//
//   - before the first namespace, /var/run/netns is made a mount point: a recursive self-bind mount, made shared
//     (mount --make-rshared), so that a namespace unmounted here is unmounted in every mount namespace that copied
//     it (containers, `ip netns exec`) and can be freed. The upgrade is serialised by a lock file, because two
//     processes upgrading at once would stack two self-binds, the second hiding the first's mounts;
//   - a namespace is an empty file /var/run/netns/NAME with the namespace's nsfs file bind-mounted on it, made from
//     a dedicated OS thread that unshares its network namespace;
//   - deleting unmounts (lazily) every mount on the file, then removes it.
//
// Leftovers. A process killed mid-way leaves its mounts; Mounts lists every nsfs mount under the directory from
// /proc/thread-self/mountinfo, including covered ones: mounts that are unreachable by path because a later mount
// sits on the directory above them, as happens when /var/run/netns was a plain directory (old conventions), a
// namespace was mounted in it, and `ip netns add` then self-bind-mounted the directory over it. Delete removes
// covered mounts too: it moves the covering mount aside (mount --move), unmounts what was under it, and moves it
// back, under the same lock; while it does, namespaces in the covering mount are not visible by name for a few
// system calls. The move is impossible when the directory's parent mount is shared (systemd hosts); Delete then
// returns an error naming the mount, which only a reboot removes.
package netns
