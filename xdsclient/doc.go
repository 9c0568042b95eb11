// Package xdsclient is Ambit's transport to Istio's control plane: a delta Aggregated Discovery Service
// (ADS) client on google.golang.org/grpc and go-control-plane's discovery types, shaped after ztunnel's.
//
// It knows type URLs, resource names and versions, not Ambit's model. A Client opens one
// DeltaAggregatedResources stream to istiod, identifies itself with a ztunnel-style Node (NodeInfo), and
// subscribes once per type URL, either to everything (wildcard) or to nothing until Fetch or Subscribe name a
// resource (on-demand). Every response is handed to the Handler registered for its type URL; the handler
// returns the resources it rejected and the client answers with an ACK, or a NACK whose error_detail lists
// each rejected resource as "<name>: <reason>". Valid resources of a partly bad response are kept.
//
// The client remembers the version of every resource it accepted. When the stream breaks it reconnects with
// jittered exponential backoff and sends those versions as initial_resource_versions, so the server resends
// only what changed and reports what was removed meanwhile; handlers keep serving what they have until then.
//
// Transport security follows ztunnel: TLS with server authentication against a root file (read again when it
// changes) and a bearer token file read on every stream, or plaintext for local development and tests.
package xdsclient
