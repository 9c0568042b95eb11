package xds

import "errors"

// Conversion and handling errors; rejections wrap them, test with errors.Is.
var (
	// ErrWrongType reports a resource whose Any carries another type than the subscription's.
	ErrWrongType = errors.New("wrong resource type")
	// ErrDecode reports bytes that do not decode as the resource's message.
	ErrDecode = errors.New("undecodable resource")
	// ErrEmptyAddress reports an Address with neither a workload nor a service.
	ErrEmptyAddress = errors.New("address has neither workload nor service")
	// ErrNameMismatch reports a resource whose name is not its key.
	ErrNameMismatch = errors.New("resource name does not match its key")
	// ErrAddressLength reports an IP that is not 4 or 16 bytes long, or a prefix longer than the address.
	ErrAddressLength = errors.New("invalid address length")
	// ErrUnknownEnum reports an enum value outside the known range, or a value ztunnel refuses.
	ErrUnknownEnum = errors.New("unknown enum value")
	// ErrPortRange reports a port above 65535.
	ErrPortRange = errors.New("port out of range")
	// ErrServiceKey reports a workload services key that is not "<namespace>/<hostname>".
	ErrServiceKey = errors.New("invalid service key")
	// ErrInvalidMatch reports a policy string match without a match type.
	ErrInvalidMatch = errors.New("string match without a match type")
	// ErrDuplicate reports a resource name that appears more than once in one response.
	ErrDuplicate = errors.New("duplicate resource name in response")
	// ErrInvalidIdentity reports a workload whose identity (trust domain, namespace, service account) is
	// not a valid SPIFFE ID: no peer could ever be verified as it, so it is refused rather than stored.
	ErrInvalidIdentity = errors.New("invalid workload identity")
	// ErrUnknownWaypoint reports a waypoint hostname that names no known service.
	ErrUnknownWaypoint = errors.New("waypoint service not known")
)
