// Package proc starts the helper processes of tests and hack tools (peers, agents, proxies, containers, CLIs)
// so that none outlives its parent, however the parent ends:
//
//   - every child gets PR_SET_PDEATHSIG (SIGKILL unless the caller chose another signal) and its own process
//     group (Setpgid);
//   - the kernel sends the death signal when the parent *thread* that forked the child exits, not the process.
//     Go may end an OS thread under a goroutine (one that exits while runtime.LockOSThread is in force, as the
//     namespace helpers do when a thread cannot be restored), which would kill children started from that
//     thread at a random moment. So every child is forked from one dedicated goroutine locked to its OS thread
//     for the whole life of the process: the death signal then fires exactly when the process dies;
//   - when a child exits, or is stopped, the rest of its process group is killed before the child is reaped
//     (its pid, and so the group id, cannot be reused until then);
//   - exec.CommandContext commands are cancelled by killing the whole group.
//
// Use Start (or Run, Output, CombinedOutput) instead of the exec.Cmd methods of the same names.
//
// Security runs a child the way a container runtime starts a container's process: this executable re-executes
// itself as a small init (Security.InitArgv, Security.Command) that enters a network namespace, chroots, drops
// the capability bounding set, sets the user, group and supplementary groups, the permitted and effective
// capabilities and no_new_privs, in runc's order, and then executes the program.
package proc
