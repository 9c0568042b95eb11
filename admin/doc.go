// Package admin serves the local HTTP surfaces of Ambit's processes: the node agent's admin API
// (localhost:15000), and the Prometheus metrics (:15020) and readiness (:15021) both processes serve, each
// as an http.Handler, plus Serve to run one with a graceful shutdown, and the build Version both report.
//
// The admin API follows ztunnel's, so that `istioctl ztunnel-config` and `ambitctl node` (or
// `ambitctl ztunnel-config`) work against either agent:
//
//	GET  /config_dump         JSON document of package dump: workloads, services, policies, certificates
//	                          (public certificates only, never keys), workloadState (the node's captured
//	                          workloads with their live connections), version, config, nodeName
//	GET  /connections         JSON list of dump.Connection: every live connection with src, dst, hop,
//	                          authority, protocol, direction, local workload, peer, peer identity,
//	                          service, waypoint, bytes each way, start and age
//	GET  /logging             "current log level is <default>[,<logger>=<level>...]"
//	POST /logging?level=S     S is "<level>" or "<logger>:<level>" (or "=") clauses, comma-separated;
//	                          levels trace, debug, info, warn (warning), error (critical), off;
//	                          ?reset restores the levels the agent started with (applied before level)
//	POST /quitquitquit        calls Options.Quit (graceful drain) and answers "shutdown now"
//	     /debug/pprof/...     Go profiles (net/http/pprof)
//	GET  /                    index
//
// The JSON schema (field names, nesting, which fields are omitted when empty) is defined once, as Go types,
// in package dump; its doc lists the differences from ztunnel. Everything here reads the agent's parts
// (state.Store, identity.Manager.Snapshot, connmgr.Manager.Snapshot) and converts with pure functions
// (BuildConfigDump, ConvertConnections and the Convert* helpers); nothing is cached.
//
// It reads the parts it is given (mesh/state, identity, proxy/connmgr) and must not import agent/ or
// waypoint/.
package admin
