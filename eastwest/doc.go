// Package eastwest is `ambit eastwest`, the east-west gateway of a network in a multi-network mesh (the
// role of an Istio ambient east-west gateway, a Gateway of class istio-east-west). Node agents on other
// networks reach this network's endpoints through it with double HBONE: an outer HBONE CONNECT to the
// gateway, mTLS with the gateway's own identity and :authority "<service hostname>:<service port>",
// carrying an inner HBONE connection whose TLS runs end to end between the client's node agent and the
// destination's. The gateway resolves the authority to a local service and one of its endpoints on its
// network (resolve.go, pure), opens plain TCP to that endpoint's :15008 and relays the stream's bytes:
// it never terminates, and cannot read, the inner TLS.
//
// It must import neither process (agent/, waypoint/); what it shares with them lives in mesh/,
// config/, proxy/, identity/, admin/, lifecycle/ and hbone/.
package eastwest
