// Package dump is the JSON schema of Ambit's node-agent admin API: the document served at
// GET /config_dump and the list served at GET /connections (see package admin).
//
// The config dump follows ztunnel's /config_dump closely enough that `istioctl ztunnel-config ... -f`
// reads an Ambit dump and `ambitctl node ... -f` reads a ztunnel dump: the top-level keys, the field
// names (camelCase) and the value shapes are those of ztunnel's serde structs and of the structs
// istioctl parses them into (istioctl/pkg/writer/ztunnel/configdump/api.go).
//
// Top level (ConfigDump):
//
//	workloads      []Workload        every known workload, sorted by namespace, name, uid
//	services       []Service         every known service, sorted by namespace, name, hostname
//	policies       []Policy          every L4 authorization, sorted by namespace, name
//	certificates   []Certificate     one per identity the agent manages, sorted by identity; no private keys
//	workloadState  map[uid]WorkloadState   local workloads and their live connections
//	version        BuildInfo
//	config         any               the agent's effective configuration (free form)
//	nodeName       string            Ambit extension: the node the agent runs on
//
// ztunnel serialises workloads and services as maps (keyed by address) in some releases and as lists in
// others; istioctl and Parse accept both. Ambit always writes lists.
//
// Differences from ztunnel, all additive or cosmetic: certificate "pem" holds the PEM text (ztunnel
// base64-encodes it); certificates may carry "nextAttempt" and "failures"; "nodeName" is Ambit's; the
// dump has no "staticConfig" (Ambit's local configuration is Kubernetes YAML, not ztunnel's format).
//
// It is the one package of the admin API that ambitctl imports: it must not import any other Ambit
// package.
package dump
