// Package owner ties resources that outlive a process (network-namespace labs, temporary directories) to the
// process that made them, by an flock(2) on a lock file that the owner holds for the resource's lifetime. The
// kernel drops the lock the moment the owner dies, however it dies (SIGKILL included), so a sweep removes exactly
// the resources whose lock it can take: a reused pid, a pid from another pid namespace or a clock cannot fool
// it, and a live owner's resources are never touched.
//
// Protocol. An owner opens (creating) the lock file, takes LOCK_EX|LOCK_NB, and checks that the path still names
// the inode it locked (a remover may have unlinked it in between; then it retries). A remover takes the same lock,
// removes the resource, unlinks the lock file while still holding the lock, and closes it. Lock files are opened
// with O_CLOEXEC, so child processes never inherit (and never prolong) a lock.
package owner
