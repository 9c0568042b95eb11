// Package admin serves the node agent's local HTTP surfaces: the admin API (localhost:15000), the
// Prometheus metrics (:15020) and readiness (:15021), each as an http.Handler, plus Serve to run one with
// a graceful shutdown.
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
// Docs section for README/ARCHITECTURE:
//
//	### Node agent admin API
//	`ambit agent` serves, on localhost:15000 only, the same admin API as ztunnel: `GET /config_dump`
//	(workloads, services, L4 policies, certificates without keys, and per local workload its live
//	connections, in ztunnel's JSON shape; schema in admin/dump), `GET /connections` (every live
//	connection with addresses, next hop, identities, waypoint and byte counts), `GET|POST /logging`
//	(`?level=debug`, `?level=access:info`, `?reset`), `POST /quitquitquit` and `/debug/pprof/`.
//	Metrics are on :15020 (`/metrics`, `/stats/prometheus`) and readiness on :15021 (`/healthz/ready`:
//	200 `ready` or 500 `not ready, pending: ...`).
//	`ambitctl node workloads|services|policies|certificates|connections|all|log` (also
//	`ambitctl ztunnel-config`/`zc` under istioctl's names) prints these with the columns and formats of
//	`istioctl ztunnel-config`, from `--admin-address` (default localhost:15000) or a saved dump `-f`;
//	`istioctl ztunnel-config ... -f` reads Ambit's dump and `ambitctl node ... -f` reads ztunnel's.
package admin
